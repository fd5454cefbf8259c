// AVX-512 inner kernels over a PackedWeight (see fast_kernels.h). Compiled with -mavx512f/bw/vl/dq
// and only called when cpuid reports them.
// GCC 12 warns inside its own AVX-512 intrinsics (their "undefined" pass-through operands).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "cpu/fast_kernels.h"

namespace onnxsparse::cpu {

namespace {

inline int64_t Min(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t Max(int64_t a, int64_t b) { return a > b ? a : b; }

template <bool kHalf>
inline __m512 LoadValues(const uint8_t* p) {
  if constexpr (kHalf) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  } else {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(p));
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

inline __mmask16 FirstLanes(int64_t count) {
  return count >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << count) - 1u);
}

// C = kb-epilogue(acc) for 16 lanes (the first `mask` ones) at c, bias at bias (same lanes).
inline void StoreC(float* c, __mmask16 mask, __m512 acc, const KBlock& kb, const float* bias_lanes, bool bias_scalar,
                   float bias_value) {
  if (kb.accumulate) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, c));
  if (kb.final) {
    __m512 bias = _mm512_setzero_ps();
    if (bias_lanes != nullptr) bias = _mm512_maskz_loadu_ps(mask, bias_lanes);
    if (bias_scalar) bias = _mm512_set1_ps(bias_value);
    acc = _mm512_fmadd_ps(acc, _mm512_set1_ps(kb.alpha), bias);
  }
  _mm512_mask_storeu_ps(c, mask, acc);
}

// Stores an NR x J tile of a Cols kernel: row r is output feature n0 + r (its bias a scalar), its J
// vectors run over pixels / rows of A, the last one masked by tail.
template <int NR, int J>
inline void StoreColsTile(__m512 (&acc)[NR][J], float* c, int64_t ldc, int64_t n0, __mmask16 tail,
                          const KBlock& kb) {
  const bool has_bias = kb.bias != nullptr;
  #pragma GCC unroll 16
  for (int r = 0; r < NR; ++r) {
    const float bias = has_bias ? kb.bias[n0 + r] : 0.0f;
    #pragma GCC unroll 16
    for (int j = 0; j < J; ++j) {
      StoreC(c + r * ldc + 16 * j, j == J - 1 ? tail : static_cast<__mmask16>(0xFFFF), acc[r][j], kb, nullptr,
             has_bias, bias);
    }
  }
}

constexpr int64_t kPrefetchBytes = 4096;  // how far ahead a streaming tile fetches its records

// ---- Rows: MR rows of A x NB blocks of 16 output features --------------------------------------

template <int MR, int NB, bool kHalf>
void RowsMicro(const PackedWeight& w, const float* a, int64_t lda, int64_t block, float* c, int64_t ldc,
               const KBlock& kb) {
  const int64_t vb = kBlockN * w.value_bytes;
  const int64_t rb = w.group_stride;
  const uint8_t* rec[NB];
  #pragma GCC unroll 16
  for (int b = 0; b < NB; ++b) rec[b] = ONNXSPARSE_RECORD(w, block + b, kb.g_begin);
  __m512 acc[MR][NB];
  #pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
    #pragma GCC unroll 16
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_ps();

  const float* a_group = a + 4 * kb.g_begin;
  for (int64_t g = kb.g_begin; g < kb.g_end; ++g) {
    __m512 v0[NB], v1[NB];
    __m512i s0[NB], s1[NB];
    if constexpr (MR <= 4) {  // memory-bound (GEMV): fetch the stream ahead of the prefetcher
      const char* ahead = reinterpret_cast<const char*>(rec[0]) + kPrefetchBytes;
      for (int64_t line = 0; line < rb; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T0);
    }
    #pragma GCC unroll 16
    for (int b = 0; b < NB; ++b) {
      v0[b] = LoadValues<kHalf>(rec[b]);
      v1[b] = LoadValues<kHalf>(rec[b] + vb);
      s0[b] = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rec[b] + 2 * vb)));
      s1[b] = _mm512_srli_epi32(s0[b], 2);
      rec[b] += rb;
    }
    #pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 x = _mm512_broadcast_f32x4(_mm_loadu_ps(a_group + r * lda));
      #pragma GCC unroll 16
      for (int b = 0; b < NB; ++b) {
        acc[r][b] = _mm512_fmadd_ps(_mm512_permutevar_ps(x, s0[b]), v0[b], acc[r][b]);
        acc[r][b] = _mm512_fmadd_ps(_mm512_permutevar_ps(x, s1[b]), v1[b], acc[r][b]);
      }
    }
    a_group += 4;
  }
  #pragma GCC unroll 16
  for (int b = 0; b < NB; ++b) {
    const int64_t n0 = (block + b) * kBlockN;
    const __mmask16 mask = FirstLanes(w.rows - n0);
    const float* bias = kb.bias != nullptr ? kb.bias + n0 : nullptr;
    #pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) StoreC(c + r * ldc + n0, mask, acc[r][b], kb, bias, false, 0.0f);
  }
}

template <int NB, bool kHalf>
void RowsTail(const PackedWeight& w, const float* a, int64_t lda, int64_t rows, int64_t block, float* c, int64_t ldc,
              const KBlock& kb) {
  switch (rows) {
    case 1: return RowsMicro<1, NB, kHalf>(w, a, lda, block, c, ldc, kb);
    case 2: return RowsMicro<2, NB, kHalf>(w, a, lda, block, c, ldc, kb);
    case 3: return RowsMicro<3, NB, kHalf>(w, a, lda, block, c, ldc, kb);
    case 4: return RowsMicro<4, NB, kHalf>(w, a, lda, block, c, ldc, kb);
    case 5: return RowsMicro<5, NB, kHalf>(w, a, lda, block, c, ldc, kb);
    case 6: return RowsMicro<6, NB, kHalf>(w, a, lda, block, c, ldc, kb);
    case 7: return RowsMicro<7, NB, kHalf>(w, a, lda, block, c, ldc, kb);
    default: return RowsMicro<8, NB, kHalf>(w, a, lda, block, c, ldc, kb);
  }
}

template <bool kHalf>
void RowsKernelT(const PackedWeight& w, const RowsTask& t) {
  constexpr int64_t kMr = 8;
  for (int64_t i = 0; i < t.m; i += kMr) {
    const int64_t rows = Min(kMr, t.m - i);
    const float* a = t.a + i * t.lda;
    float* c = t.c + i * t.ldc;
    int64_t block = t.block_begin;
    for (; block + 2 <= t.block_end; block += 2) RowsTail<2, kHalf>(w, a, t.lda, rows, block, c, t.ldc, t.kb);
    if (block < t.block_end) RowsTail<1, kHalf>(w, a, t.lda, rows, block, c, t.ldc, t.kb);
  }
}

void RowsKernel(const PackedWeight& w, const RowsTask& t) {
  if (w.fp16) return RowsKernelT<true>(w, t);
  return RowsKernelT<false>(w, t);
}

// ---- Cols: NR output features x J vectors of 16 pixels -----------------------------------------

template <int NR, int J, bool kHalf>
void ColsMicro(const PackedWeight& w, const float* p, int64_t cols, int64_t n0, float* c, int64_t ldc,
               const KBlock& kb) {
  const int64_t vb = kBlockN * w.value_bytes;
  const int64_t rb = w.group_stride;
  const int64_t lane0 = n0 % kBlockN;
  const uint8_t* rec = ONNXSPARSE_RECORD(w, n0 / kBlockN, kb.g_begin);
  const __mmask16 tail = FirstLanes(cols - 16 * (J - 1));
  constexpr int64_t ldp = kStripCols;
  // Each accumulator takes two dependent FMAs per group; with fewer than 8 of them the FMA latency
  // (4 cycles) would idle the pipes, so narrow tiles keep the second value's products apart.
  constexpr bool kSplit = NR * J < 8;
  __m512 acc[NR][J], acc1[NR][J];
  #pragma GCC unroll 16
  for (int r = 0; r < NR; ++r)
    #pragma GCC unroll 16
    for (int j = 0; j < J; ++j) acc[r][j] = acc1[r][j] = _mm512_setzero_ps();

  // The first tile of each pair of blocks fetches the pair's records ahead (later tiles of the
  // pair find them in L1): when few pixels share the weights they stream from memory.
  const bool lead = n0 % (2 * kBlockN) == 0;
  const float* p_group = p;
  for (int64_t g = kb.g_begin; g < kb.g_end; ++g) {
    if (lead) {
      const char* ahead = reinterpret_cast<const char*>(rec) + kPrefetchBytes;
      for (int64_t line = 0; line < rb; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T0);
    }
    const uint8_t* sel = rec + 2 * vb;
    #pragma GCC unroll 16
    for (int r = 0; r < NR; ++r) {
      const unsigned s = sel[lane0 + r];
      const float* row0 = p_group + (s & 3) * ldp;
      const float* row1 = p_group + (s >> 2) * ldp;
      const __m512 v0 = _mm512_set1_ps(LoadValue<kHalf>(rec, lane0 + r));
      const __m512 v1 = _mm512_set1_ps(LoadValue<kHalf>(rec + vb, lane0 + r));
      #pragma GCC unroll 16
      for (int j = 0; j < J; ++j) {
        const __m512 x0 = j == J - 1 ? _mm512_maskz_loadu_ps(tail, row0 + 16 * j) : _mm512_loadu_ps(row0 + 16 * j);
        const __m512 x1 = j == J - 1 ? _mm512_maskz_loadu_ps(tail, row1 + 16 * j) : _mm512_loadu_ps(row1 + 16 * j);
        acc[r][j] = _mm512_fmadd_ps(x0, v0, acc[r][j]);
        if constexpr (kSplit) {
          acc1[r][j] = _mm512_fmadd_ps(x1, v1, acc1[r][j]);
        } else {
          acc[r][j] = _mm512_fmadd_ps(x1, v1, acc[r][j]);
        }
      }
    }
    rec += rb;
    p_group += 4 * ldp;
  }
  if constexpr (kSplit) {
    #pragma GCC unroll 16
    for (int r = 0; r < NR; ++r)
      #pragma GCC unroll 16
      for (int j = 0; j < J; ++j) acc[r][j] = _mm512_add_ps(acc[r][j], acc1[r][j]);
  }
  StoreColsTile<NR, J>(acc, c, ldc, n0, tail, kb);
}

// NR features over one strip of up to 64 pixels (4 vectors, the last one masked).
template <int NR, bool kHalf>
void ColsStrip(const PackedWeight& w, const float* p, int64_t cols, int64_t n0, float* c, int64_t ldc,
               const KBlock& kb) {
  if (cols > 48) return ColsMicro<NR, 4, kHalf>(w, p, cols, n0, c, ldc, kb);
  if (cols > 32) return ColsMicro<NR, 3, kHalf>(w, p, cols, n0, c, ldc, kb);
  if (cols > 16) return ColsMicro<NR, 2, kHalf>(w, p, cols, n0, c, ldc, kb);
  return ColsMicro<NR, 1, kHalf>(w, p, cols, n0, c, ldc, kb);
}

template <bool kHalf>
void ColsKernelT(const PackedWeight& w, const ColsTask& t) {
  constexpr int64_t kNr = 4;
  // Strip by strip: a strip's panel slice (K block x 64 pixels) stays in L1 across the features.
  for (int64_t j = 0; j < t.cols; j += kStripCols) {
    const int64_t cols = Min(kStripCols, t.cols - j);
    const float* p = t.p + (j / kStripCols) * t.strip_stride;
    for (int64_t n = t.n_begin, nr = 0; n < t.n_end; n += nr) {
      nr = Min(Min(kNr, t.n_end - n), kBlockN - n % kBlockN);  // features of one block
      float* c = t.c + (n - t.n_begin) * t.ldc + j;
      switch (nr) {
        case 1: ColsStrip<1, kHalf>(w, p, cols, n, c, t.ldc, t.kb); break;
        case 2: ColsStrip<2, kHalf>(w, p, cols, n, c, t.ldc, t.kb); break;
        case 3: ColsStrip<3, kHalf>(w, p, cols, n, c, t.ldc, t.kb); break;
        default: ColsStrip<4, kHalf>(w, p, cols, n, c, t.ldc, t.kb); break;
      }
    }
  }
}

void ColsKernel(const PackedWeight& w, const ColsTask& t) {
  if (w.fp16) return ColsKernelT<true>(w, t);
  return ColsKernelT<false>(w, t);
}

// ---- Cols over narrow strips (W = 16 or 32 pixels): wider feature tiles -----------------------
// A strip of 16 pixels is one vector: the tile is a whole block of 16 features (16 accumulators),
// so each record is read by one tile; 32 pixels: 8 features x 2 vectors. With one or two vectors
// per feature, whatever a feature needs besides its loads and FMAs shows: the strides are
// compile-time constants, the per-feature addresses are displacements from three pointers, the
// values are broadcast from general registers (no vector load slot), and the panel is zero-padded
// to W (no masked loads). Still one zmm load per FMA: Zen 4 does one per cycle.
template <int NR, int J, bool kHalf, int W>
void ColsNarrowMicro(const PackedWeight& w, const float* p, int64_t cols, int64_t n0, float* c, int64_t ldc,
                     const KBlock& kb) {
  constexpr int64_t kValueBytes = kHalf ? 2 : 4;
  constexpr int64_t vb = kBlockN * kValueBytes;
  constexpr int64_t rb = 2 * (2 * vb + kBlockN);  // group_stride
  constexpr int kRowShift = W == 16 ? 6 : 7;      // log2(W * sizeof(float)): a panel row's bytes
  const int64_t lane0 = n0 % kBlockN;
  const uint8_t* rec = ONNXSPARSE_RECORD(w, n0 / kBlockN, kb.g_begin);
  const __mmask16 tail = FirstLanes(cols - 16 * (J - 1));
  __m512 acc[NR][J];
  #pragma GCC unroll 16
  for (int r = 0; r < NR; ++r)
    #pragma GCC unroll 16
    for (int j = 0; j < J; ++j) acc[r][j] = _mm512_setzero_ps();

  const bool lead = n0 % (2 * kBlockN) == 0;
  const char* p_group = reinterpret_cast<const char*>(p);
  for (int64_t g = kb.g_begin; g < kb.g_end; ++g) {
    if (lead) {
      const char* ahead = reinterpret_cast<const char*>(rec) + kPrefetchBytes;
      #pragma GCC unroll 8
      for (int64_t line = 0; line < rb; line += 64) _mm_prefetch(ahead + line, _MM_HINT_T0);
    }
    const uint8_t* sel = rec + 2 * vb + lane0;
    using Value = std::conditional_t<kHalf, uint16_t, float>;
    const Value* v0 = reinterpret_cast<const Value*>(rec) + lane0;
    const Value* v1 = reinterpret_cast<const Value*>(rec + vb) + lane0;
    // Opaque to the optimiser: otherwise GCC hoists the 3 x NR addresses (lane0 is not a
    // constant) out of the loop and spills them, reloading two per feature.
    asm("" : "+r"(sel), "+r"(v0), "+r"(v1));
    #pragma GCC unroll 16
    for (int r = 0; r < NR; ++r) {
      const unsigned s = sel[r];
      const float* row0 = reinterpret_cast<const float*>(p_group + ((s & 3u) << kRowShift));
      const float* row1 = reinterpret_cast<const float*>(p_group + ((s >> 2) << kRowShift));
      __m512 b0, b1;
      if constexpr (kHalf) {
        b0 = _mm512_set1_ps(LoadValue<kHalf>(reinterpret_cast<const uint8_t*>(v0), r));
        b1 = _mm512_set1_ps(LoadValue<kHalf>(reinterpret_cast<const uint8_t*>(v1), r));
      } else {
        // Through a general register (vpbroadcastd zmm, r32), not vbroadcastss from memory: that
        // one takes a vector load slot, and the zmm loads of the panel rows already fill them
        // (K=N=1024, M=16 in cache: 133 -> 147 GFLOP/s dense-equivalent; fp16 goes through a
        // conversion in registers anyway).
        int32_t i0, i1;
        std::memcpy(&i0, v0 + r, 4);
        std::memcpy(&i1, v1 + r, 4);
        asm("" : "+r"(i0), "+r"(i1));  // or GCC turns it back into vbroadcastss from memory
        b0 = _mm512_castsi512_ps(_mm512_set1_epi32(i0));
        b1 = _mm512_castsi512_ps(_mm512_set1_epi32(i1));
      }
      #pragma GCC unroll 16
      for (int j = 0; j < J; ++j) {
        acc[r][j] = _mm512_fmadd_ps(_mm512_load_ps(row0 + 16 * j), b0, acc[r][j]);
        acc[r][j] = _mm512_fmadd_ps(_mm512_load_ps(row1 + 16 * j), b1, acc[r][j]);
      }
    }
    rec += rb;
    p_group += 4 * W * sizeof(float);
  }
  StoreColsTile<NR, J>(acc, c, ldc, n0, tail, kb);
}

template <int W, bool kHalf>
void ColsNarrowTile(const PackedWeight& w, const float* p, int64_t cols, int64_t n0, int64_t nr, float* c,
                    int64_t ldc, const KBlock& kb) {
  constexpr int J = W / 16;
  if (cols <= 16) {
    if constexpr (J == 1) {
      switch (nr) {
        case 16: return ColsNarrowMicro<16, 1, kHalf, W>(w, p, cols, n0, c, ldc, kb);
        case 8: return ColsNarrowMicro<8, 1, kHalf, W>(w, p, cols, n0, c, ldc, kb);
        case 4: return ColsNarrowMicro<4, 1, kHalf, W>(w, p, cols, n0, c, ldc, kb);
        case 2: return ColsNarrowMicro<2, 1, kHalf, W>(w, p, cols, n0, c, ldc, kb);
        default: return ColsNarrowMicro<1, 1, kHalf, W>(w, p, cols, n0, c, ldc, kb);
      }
    } else {
      switch (nr) {
        case 8: return ColsNarrowMicro<8, 1, kHalf, W>(w, p, cols, n0, c, ldc, kb);
        case 4: return ColsNarrowMicro<4, 1, kHalf, W>(w, p, cols, n0, c, ldc, kb);
        case 2: return ColsNarrowMicro<2, 1, kHalf, W>(w, p, cols, n0, c, ldc, kb);
        default: return ColsNarrowMicro<1, 1, kHalf, W>(w, p, cols, n0, c, ldc, kb);
      }
    }
  }
  if constexpr (J == 2) {
    switch (nr) {
      case 8: return ColsNarrowMicro<8, 2, kHalf, W>(w, p, cols, n0, c, ldc, kb);
      case 4: return ColsNarrowMicro<4, 2, kHalf, W>(w, p, cols, n0, c, ldc, kb);
      case 2: return ColsNarrowMicro<2, 2, kHalf, W>(w, p, cols, n0, c, ldc, kb);
      default: return ColsNarrowMicro<1, 2, kHalf, W>(w, p, cols, n0, c, ldc, kb);
    }
  }
}

template <int W, bool kHalf>
void ColsNarrowKernelT(const PackedWeight& w, const ColsTask& t) {
  constexpr int64_t kNr = W == 16 ? 16 : 8;
  for (int64_t j = 0; j < t.cols; j += W) {
    const int64_t cols = Min(W, t.cols - j);
    const float* p = t.p + (j / W) * t.strip_stride;
    for (int64_t n = t.n_begin, nr = 0; n < t.n_end; n += nr) {
      const int64_t most = Min(Min(kNr, t.n_end - n), kBlockN - n % kBlockN);  // features of one block
      nr = 1;
      while (nr * 2 <= most) nr *= 2;  // tiles of 16 / 8 / 4 / 2 / 1 features
      ColsNarrowTile<W, kHalf>(w, p, cols, n, nr, t.c + (n - t.n_begin) * t.ldc + j, t.ldc, t.kb);
    }
  }
}

void ColsNarrowKernel(const PackedWeight& w, const ColsTask& t) {
  if (t.strip_cols == 16) {
    if (w.fp16) return ColsNarrowKernelT<16, true>(w, t);
    return ColsNarrowKernelT<16, false>(w, t);
  }
  if (w.fp16) return ColsNarrowKernelT<32, true>(w, t);
  return ColsNarrowKernelT<32, false>(w, t);
}

void HalfToFloat(const uint16_t* src, float* dst, int64_t count) {
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  }
  for (; i < count; ++i) dst[i] = _cvtsh_ss(src[i]);
}

void FloatToHalf(const float* src, uint16_t* dst, int64_t count) {
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < count; ++i) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

}  // namespace

const FastKernelSet kFastKernelsAvx512 = {RowsKernel, ColsKernel, HalfToFloat, FloatToHalf, ColsNarrowKernel};

}  // namespace onnxsparse::cpu
