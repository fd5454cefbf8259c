// AVX2 + FMA + F16C inner kernels over a PackedWeight (see fast_kernels.h): a block of 16 output
// features is two 8-lane halves. Rows: both 128-bit lanes hold the group's 4 inputs, so the in-lane
// _mm256_permutevar_ps (sel's low 2 bits) selects an input for each feature. Cols: sel picks panel
// rows by address, no permutes.
#include <immintrin.h>

#include "cpu/fast_kernels.h"

namespace onnxsparse::cpu {

namespace {

inline int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t Max(int64_t a, int64_t b) { return a > b ? a : b; }

template <bool kHalf>
inline __m256 LoadValues8(const uint8_t* p) {
  if constexpr (kHalf) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  }
}

template <bool kHalf>
inline float LoadValue(const uint8_t* p, int64_t lane) {
  if constexpr (kHalf) {
    return _cvtsh_ss(reinterpret_cast<const uint16_t*>(p)[lane]);
  } else {
    return reinterpret_cast<const float*>(p)[lane];
  }
}

// A maskload/maskstore mask of the first `count` (clamped to 0..8) lanes.
inline __m256i FirstLanes8(int64_t count) {
  const int64_t n = Max(0, Min(8, count));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

inline void StoreC8(float* c, int64_t valid, __m256 acc, const KBlock& kb, const float* bias_lanes, bool bias_scalar,
                    float bias_value) {
  if (valid <= 0) return;
  const bool full = valid >= 8;
  const __m256i mask = FirstLanes8(valid);
  if (kb.accumulate) acc = _mm256_add_ps(acc, full ? _mm256_loadu_ps(c) : _mm256_maskload_ps(c, mask));
  if (kb.final) {
    __m256 bias = _mm256_setzero_ps();
    if (bias_lanes != nullptr) bias = full ? _mm256_loadu_ps(bias_lanes) : _mm256_maskload_ps(bias_lanes, mask);
    if (bias_scalar) bias = _mm256_set1_ps(bias_value);
    acc = _mm256_fmadd_ps(acc, _mm256_set1_ps(kb.alpha), bias);
  }
  if (full) {
    _mm256_storeu_ps(c, acc);
  } else {
    _mm256_maskstore_ps(c, mask, acc);
  }
}

// How far ahead a streaming tile fetches its records (M=1, K=1024 and 4096: 4096 bytes 1.88-2.11x
// dense, 2048 1.46-1.84x, 1024 1.52-1.92x, 8192 1.59-1.83x; a shared machine, so +-15%).
constexpr int64_t kPrefetchBytes = 4096;

// ---- Rows: MR rows of A x NB blocks of 16 output features (2 NB halves of 8) -------------------
// NB = 2 walks both blocks of a pair (one sequential stream of 2 records per group); per group and
// half: the 8 sel bytes widened once, then per row two in-lane permutes of the broadcast inputs and
// two FMAs. The permutes share the FP pipes with the FMAs (Zen 3: FMA on FP0/1, vpermilps on FP1/2),
// so a row costs 4 FP ops per 2 x 8 weight values (dense: 2 FMAs per 2 x 8).

template <int MR, int NB, bool kHalf>
void RowsMicro(const PackedWeight& w, const float* a, int64_t lda, int64_t block, float* c, int64_t ldc,
               const KBlock& kb, bool lead) {
  constexpr int NH = 2 * NB;
  const int64_t vb = kBlockN * w.value_bytes;
  const int64_t rb = w.group_stride;
  const uint8_t* rec = ONNXSPARSE_RECORD(w, block, kb.g_begin);
  const int64_t next = w.record_bytes;  // block + 1 (NB = 2 starts at an even block)
  __m256 acc[MR][NH];
  #pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
    #pragma GCC unroll 16
    for (int h = 0; h < NH; ++h) acc[r][h] = _mm256_setzero_ps();

  const float* a_group = a + 4 * kb.g_begin;
  for (int64_t g = kb.g_begin; g < kb.g_end; ++g) {
    if (lead) {  // memory-bound (few rows): fetch the pair's stream ahead of the hardware prefetcher
      const char* ahead = reinterpret_cast<const char*>(rec) + kPrefetchBytes;
      for (int64_t line = 0; line < rb; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T0);
    }
    __m256 x[MR];
    #pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) x[r] = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(a_group + r * lda));
    #pragma GCC unroll 16
    for (int h = 0; h < NH; ++h) {
      const uint8_t* rh = rec + (h / 2) * next;
      const int64_t half = (h % 2) * 8 * w.value_bytes;
      const __m256i s0 =
          _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(rh + 2 * vb + 8 * (h % 2))));
      const __m256i s1 = _mm256_srli_epi32(s0, 2);
      const __m256 v0 = LoadValues8<kHalf>(rh + half);
      const __m256 v1 = LoadValues8<kHalf>(rh + vb + half);
      #pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        acc[r][h] = _mm256_fmadd_ps(_mm256_permutevar_ps(x[r], s0), v0, acc[r][h]);
        acc[r][h] = _mm256_fmadd_ps(_mm256_permutevar_ps(x[r], s1), v1, acc[r][h]);
      }
    }
    rec += rb;
    a_group += 4;
  }
  #pragma GCC unroll 16
  for (int h = 0; h < NH; ++h) {
    const int64_t n0 = (block + h / 2) * kBlockN + 8 * (h % 2);
    const int64_t valid = w.rows - n0;
    const float* bias = kb.bias != nullptr ? kb.bias + n0 : nullptr;
    #pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) StoreC8(c + r * ldc + n0, valid, acc[r][h], kb, bias, false, 0.0f);
  }
}

// Rows tiles: 2 rows over a pair of blocks (8 accumulators, 14 of the 16 ymm registers). A tile of
// 4 rows over one block (also 8 accumulators) needs 4 broadcast inputs besides: it spills, and it
// walks each pair twice (shared Zen 4 forced to AVX2, K=1024, N=4096, thread CPU time: M=4
// 1.19-1.44x dense -> 1.49-1.65x with 2 x 2 tiles; M=16 55-59 -> 80-81 dense-equivalent GFLOP/s).
template <bool kHalf>
void RowsTile(const PackedWeight& w, const RowsTask& t, int64_t i, int64_t block, int64_t nb, bool lead) {
  const bool two = t.m - i >= 2;
  const float* a = t.a + i * t.lda;
  float* c = t.c + i * t.ldc;
  if (nb == 2) {
    if (two) return RowsMicro<2, 2, kHalf>(w, a, t.lda, block, c, t.ldc, t.kb, lead);
    return RowsMicro<1, 2, kHalf>(w, a, t.lda, block, c, t.ldc, t.kb, lead);
  }
  if (two) return RowsMicro<2, 1, kHalf>(w, a, t.lda, block, c, t.ldc, t.kb, lead);
  return RowsMicro<1, 1, kHalf>(w, a, t.lda, block, c, t.ldc, t.kb, lead);
}

template <bool kHalf>
void RowsKernelT(const PackedWeight& w, const RowsTask& t) {
  constexpr int64_t kMr = 2;
  // Pairs of blocks (a block without its pair where the range starts or ends odd).
  auto next_nb = [&](int64_t block) { return block % 2 == 0 && block + 2 <= t.block_end ? 2 : 1; };
  if (t.m <= 8) {
    // One pass over K, the weights from memory: pair by pair, each pair (K = 4096: 288 KiB) stays in
    // L2 for the other row tiles (rows outermost re-read the whole chunk, 2.3 MiB, from L3 / memory).
    for (int64_t block = t.block_begin, nb = 0; block < t.block_end; block += nb) {
      nb = next_nb(block);
      for (int64_t i = 0; i < t.m; i += kMr) RowsTile<kHalf>(w, t, i, block, nb, i == 0);
    }
    return;
  }
  // A K block of the chunk's weights stays in L2 across the row tiles; the tile's rows of A in L1.
  for (int64_t i = 0; i < t.m; i += kMr) {
    for (int64_t block = t.block_begin, nb = 0; block < t.block_end; block += nb) {
      nb = next_nb(block);
      RowsTile<kHalf>(w, t, i, block, nb, false);
    }
  }
}

void RowsKernel(const PackedWeight& w, const RowsTask& t) {
  if (w.fp16) return RowsKernelT<true>(w, t);
  return RowsKernelT<false>(w, t);
}

// ---- Cols: NR output features x J vectors of 8 pixels ------------------------------------------

template <int NR, int J, bool kHalf>
void ColsMicro(const PackedWeight& w, const float* p, int64_t cols, int64_t n0, float* c, int64_t ldc,
               const KBlock& kb) {
  const int64_t vb = kBlockN * w.value_bytes;
  const int64_t rb = w.group_stride;
  const int64_t lane0 = n0 % kBlockN;
  const uint8_t* rec = ONNXSPARSE_RECORD(w, n0 / kBlockN, kb.g_begin);
  const int64_t tail_count = cols - 8 * (J - 1);
  const bool tail_full = tail_count >= 8;
  const __m256i tail = FirstLanes8(tail_count);
  constexpr int64_t ldp = kStripCols;
  __m256 acc[NR][J];
  #pragma GCC unroll 16
  for (int r = 0; r < NR; ++r)
    #pragma GCC unroll 16
    for (int j = 0; j < J; ++j) acc[r][j] = _mm256_setzero_ps();

  const float* p_group = p;
  for (int64_t g = kb.g_begin; g < kb.g_end; ++g) {
    const uint8_t* sel = rec + 2 * vb;
    #pragma GCC unroll 16
    for (int r = 0; r < NR; ++r) {
      const unsigned s = sel[lane0 + r];
      const float* row0 = p_group + (s & 3) * ldp;
      const float* row1 = p_group + (s >> 2) * ldp;
      const __m256 v0 = _mm256_set1_ps(LoadValue<kHalf>(rec, lane0 + r));
      const __m256 v1 = _mm256_set1_ps(LoadValue<kHalf>(rec + vb, lane0 + r));
      #pragma GCC unroll 16
      for (int j = 0; j < J; ++j) {
        const bool masked = j == J - 1 && !tail_full;
        const __m256 x0 = masked ? _mm256_maskload_ps(row0 + 8 * j, tail) : _mm256_loadu_ps(row0 + 8 * j);
        const __m256 x1 = masked ? _mm256_maskload_ps(row1 + 8 * j, tail) : _mm256_loadu_ps(row1 + 8 * j);
        acc[r][j] = _mm256_fmadd_ps(x0, v0, acc[r][j]);
        acc[r][j] = _mm256_fmadd_ps(x1, v1, acc[r][j]);
      }
    }
    rec += rb;
    p_group += 4 * ldp;
  }
  #pragma GCC unroll 16
  for (int r = 0; r < NR; ++r) {
    const int64_t n = n0 + r;
    const bool has_bias = kb.bias != nullptr;
    const float bias = has_bias ? kb.bias[n] : 0.0f;
    #pragma GCC unroll 16
    for (int j = 0; j < J; ++j) {
      StoreC8(c + r * ldc + 8 * j, j == J - 1 ? tail_count : 8, acc[r][j], kb, nullptr, has_bias, bias);
    }
  }
}

// NR features over up to 24 pixels of one strip (3 vectors, the last one masked).
template <int NR, bool kHalf>
void ColsPiece(const PackedWeight& w, const float* p, int64_t cols, int64_t n0, float* c, int64_t ldc,
               const KBlock& kb) {
  if (cols > 16) return ColsMicro<NR, 3, kHalf>(w, p, cols, n0, c, ldc, kb);
  if (cols > 8) return ColsMicro<NR, 2, kHalf>(w, p, cols, n0, c, ldc, kb);
  return ColsMicro<NR, 1, kHalf>(w, p, cols, n0, c, ldc, kb);
}

template <bool kHalf>
void ColsKernelT(const PackedWeight& w, const ColsTask& t) {
  constexpr int64_t kNr = 4;
  constexpr int64_t kPiece = 24;
  for (int64_t j = 0; j < t.cols; j += kStripCols) {
    const int64_t strip_cols = Min(kStripCols, t.cols - j);
    const float* strip = t.p + (j / kStripCols) * t.strip_stride;
    for (int64_t n = t.n_begin, nr = 0; n < t.n_end; n += nr) {
      nr = Min(Min(kNr, t.n_end - n), kBlockN - n % kBlockN);  // features of one block
      for (int64_t jj = 0; jj < strip_cols; jj += kPiece) {
        const int64_t cols = Min(kPiece, strip_cols - jj);
        float* c = t.c + (n - t.n_begin) * t.ldc + j + jj;
        const float* p = strip + jj;
        switch (nr) {
          case 1: ColsPiece<1, kHalf>(w, p, cols, n, c, t.ldc, t.kb); break;
          case 2: ColsPiece<2, kHalf>(w, p, cols, n, c, t.ldc, t.kb); break;
          case 3: ColsPiece<3, kHalf>(w, p, cols, n, c, t.ldc, t.kb); break;
          default: ColsPiece<4, kHalf>(w, p, cols, n, c, t.ldc, t.kb); break;
        }
      }
    }
  }
}

void ColsKernel(const PackedWeight& w, const ColsTask& t) {
  if (w.fp16) return ColsKernelT<true>(w, t);
  return ColsKernelT<false>(w, t);
}


void HalfToFloat(const uint16_t* src, float* dst, int64_t count) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  }
  for (; i < count; ++i) dst[i] = _cvtsh_ss(src[i]);
}

void FloatToHalf(const float* src, uint16_t* dst, int64_t count) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < count; ++i) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

}  // namespace

// MatMul runs Rows at every M (rows_only): on the shared Zen 4 forced to AVX2, K=1024, N=4096, 1
// thread, thread CPU time, Rows' 2 x 2 tiles reached 80-95 dense-equivalent GFLOP/s at M=16..256
// against 65-81 for a permute-free narrow Cols kernel (strips of 16 / 32 rows, 12 accumulators; it
// was bound by its loads: 2 J panel vectors + 2 broadcasts per 2 J FMAs) and ~74 for the 64-wide
// Cols kernel (M=256), which Conv still uses.
const FastKernelSet kFastKernelsAvx2 = {RowsKernel, ColsKernel, HalfToFloat, FloatToHalf, nullptr, true};

}  // namespace onnxsparse::cpu
