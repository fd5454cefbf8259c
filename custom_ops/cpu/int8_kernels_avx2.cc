// AVX2 int8 kernel (int8_kernels.h, format kCodes). Compiled with -mavx2 and only called when cpuid
// reports it.
//
// No VNNI, and vpmaddubsw's int16 pair sums of u8 x s8 products can saturate, so the products are
// formed in int16: for each row of A and group of 4 activations a[0..3], a table of 8 dwords holds
// the (a[p0], a[p1]) pair of each code as two zero-extended words (one vpshufb of the broadcast
// group, built once per row tile for the whole K); vpermd picks each of 8 features' dword by its
// code (the index byte, or its high nibble: vpermd reads the low 3 bits of each lane), and
// vpmaddwd multiplies it by the feature's two sign-extended values and sums them exactly into the
// feature's int32 lane. Per 8 features, pair and row: 2 vpermd, 2 vpmaddwd, 2 vpaddd; the codes
// and values are loaded once per pair and reused over up to 4 rows.
#include <immintrin.h>

#include <cstdlib>
#include <cstring>
#include <new>

#include "cpu/int8_kernels.h"

namespace onnxsparse::cpu {

namespace {

// (a[p0], a[p1]) of each code (int8_kernels.h: kInt8CodeFirst/Second) as words, from a group's 4
// activations broadcast to every dword.
inline __m256i TableControl() {
  return _mm256_setr_epi8(0, -128, 1, -128, 0, -128, 2, -128, 0, -128, 3, -128, 1, -128, 2, -128,  //
                          1, -128, 3, -128, 2, -128, 3, -128, 1, -128, 1, -128, 2, -128, 2, -128);
}

// The tables of `rows` rows of A_u: row r, group g at tab + (r * groups + g) * 8.
void BuildTables(const uint8_t* a, int64_t lda, int64_t rows, int64_t groups, int32_t* tab) {
  const __m256i control = TableControl();
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = a + r * lda;
    int32_t* out = tab + r * groups * 8;
    for (int64_t g = 0; g < groups; ++g) {
      int32_t four;
      std::memcpy(&four, row + 4 * g, 4);
      _mm256_store_si256(reinterpret_cast<__m256i*>(out + 8 * g),
                         _mm256_shuffle_epi8(_mm256_set1_epi32(four), control));
    }
  }
}

// Rows r < MR (their tables at tab) times NO octets of 8 features from octet `octet0` of `block`.
template <int MR, int NO>
void Tile(const Int8PackedWeight& w, const int32_t* tab, int64_t groups, int64_t block, int octet0, int32_t* c,
          int64_t ldc) {
  __m256i acc[MR][NO];
  for (int r = 0; r < MR; ++r) {
    for (int o = 0; o < NO; ++o) acc[r][o] = _mm256_setzero_si256();
  }
  const uint8_t* values = ONNXSPARSE_INT8_VALUES(w, block);
  const uint8_t* index = ONNXSPARSE_INT8_INDEX(w, block);
  for (int64_t p = 0; p < w.pairs; ++p) {
    __m256i code0[NO], code1[NO], w0[NO], w1[NO];
    for (int o = 0; o < NO; ++o) {
      const int octet = octet0 + o;
      const __m256i codes = _mm256_cvtepu8_epi32(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(index + p * kInt8BlockN + 8 * octet)));
      code0[o] = codes;                         // the first group's code in bits 0-2
      code1[o] = _mm256_srli_epi32(codes, 4);   // the second group's
      // Words: the first group's value in the low byte, the second's in the high byte.
      const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(values + p * 64 + octet * 32));
      w0[o] = _mm256_srai_epi16(_mm256_slli_epi16(v, 8), 8);
      w1[o] = _mm256_srai_epi16(v, 8);
    }
    for (int r = 0; r < MR; ++r) {
      const __m256i* t = reinterpret_cast<const __m256i*>(tab + (r * groups + 2 * p) * 8);
      const __m256i t0 = _mm256_load_si256(t), t1 = _mm256_load_si256(t + 1);
      for (int o = 0; o < NO; ++o) {
        const __m256i s0 = _mm256_madd_epi16(_mm256_permutevar8x32_epi32(t0, code0[o]), w0[o]);
        const __m256i s1 = _mm256_madd_epi16(_mm256_permutevar8x32_epi32(t1, code1[o]), w1[o]);
        acc[r][o] = _mm256_add_epi32(acc[r][o], _mm256_add_epi32(s0, s1));
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int o = 0; o < NO; ++o) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc + 8 * (octet0 + o)), acc[r][o]);
    }
  }
}

template <int MR>
void RowTile(const Int8PackedWeight& w, const Int8Task& task, const int32_t* tab, int64_t groups, int32_t* c) {
  for (int64_t b = task.block_begin; b < task.block_end; ++b) {
    int32_t* cb = c + (b - task.block_begin) * kInt8BlockN;
    if constexpr (MR == 1) {
      Tile<1, 2>(w, tab, groups, b, 0, cb, task.ldc);
    } else {
      Tile<MR, 1>(w, tab, groups, b, 0, cb, task.ldc);
      Tile<MR, 1>(w, tab, groups, b, 1, cb, task.ldc);
    }
  }
}

int32_t* TableScratch(int64_t count) {
  struct Free {
    void operator()(int32_t* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<int32_t, Free> buffer;
  thread_local int64_t size = 0;
  if (size < count || !buffer) {
    buffer.reset(static_cast<int32_t*>(std::aligned_alloc(64, static_cast<size_t>((count * 4 + 63) / 64 * 64 + 64))));
    if (!buffer) throw std::bad_alloc();
    size = count;
  }
  return buffer.get();
}

void GemmAvx2(const Int8PackedWeight& w, const Int8Task& task) {
  constexpr int kMr = 4;
  const int64_t groups = 2 * w.pairs;
  int32_t* tab = TableScratch(kMr * groups * 8);
  for (int64_t i = 0; i < task.m; i += kMr) {
    const int64_t rows = task.m - i < kMr ? task.m - i : kMr;
    BuildTables(task.a + i * task.lda, task.lda, rows, groups, tab);
    int32_t* c = task.c + i * task.ldc;
    switch (rows) {
      case 4: RowTile<4>(w, task, tab, groups, c); break;
      case 3: RowTile<3>(w, task, tab, groups, c); break;
      case 2: RowTile<2>(w, task, tab, groups, c); break;
      default: RowTile<1>(w, task, tab, groups, c); break;
    }
  }
}

// The epilogue, 8 features a vector and the tail one by one; the same numbers as the portable one
// (round to nearest even; the clamp sends NaN low).
inline __m256 ScaledSum(__m256i acc, __m256i corr, __m256 scale, bool relu) {
  __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(acc, corr)), scale);
  return relu ? _mm256_max_ps(f, _mm256_setzero_ps()) : f;
}

void EpilogueAvx2(const int32_t* acc, int64_t count, const Int8Epilogue& ep, int64_t n0, void* out) {
  const int32_t* corr = ep.corr + n0;
  const float* scale = ep.scale + n0;
  const __m256 lo_f = _mm256_set1_ps(-4194304.0f), hi_f = _mm256_set1_ps(4194304.0f);
  const __m256i zp = _mm256_set1_epi32(ep.y_zero_point);
  const int32_t lo_q = ep.out == Int8Out::kUint8 ? 0 : -128, hi_q = ep.out == Int8Out::kUint8 ? 255 : 127;
  const __m256i lo = _mm256_set1_epi32(lo_q), hi = _mm256_set1_epi32(hi_q);
  int64_t j = 0;
  for (; j + 8 <= count; j += 8) {
    const __m256 f = ScaledSum(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc + j)),
                               _mm256_loadu_si256(reinterpret_cast<const __m256i*>(corr + j)),
                               _mm256_loadu_ps(scale + j), ep.relu);
    if (ep.out == Int8Out::kFloat) {
      _mm256_storeu_ps(static_cast<float*>(out) + j, f);
      continue;
    }
    const __m256 clamped = _mm256_min_ps(_mm256_max_ps(f, lo_f), hi_f);
    const __m256i r = _mm256_cvtps_epi32(_mm256_round_ps(clamped, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m256i q = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(r, zp), lo), hi);
    // The low byte of each int32 lane, in order.
    const __m256i bytes = _mm256_shuffle_epi8(q, _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                                  -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1,
                                                                  -1, -1, -1, -1, -1));
    const int64_t packed = _mm256_extract_epi64(_mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0)), 0);
    std::memcpy(static_cast<uint8_t*>(out) + j, &packed, 8);
  }
  for (; j < count; ++j) {
    const int32_t sum = static_cast<int32_t>(static_cast<uint32_t>(acc[j]) + static_cast<uint32_t>(corr[j]));
    float f = static_cast<float>(sum) * scale[j];
    if (ep.relu) f = f > 0.0f ? f : 0.0f;
    if (ep.out == Int8Out::kFloat) {
      static_cast<float*>(out)[j] = f;
      continue;
    }
    f = f > -4194304.0f ? f : -4194304.0f;
    f = f < 4194304.0f ? f : 4194304.0f;
    const int32_t r = _mm_cvtss_si32(_mm_round_ss(_mm_setzero_ps(), _mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    int32_t q = r + ep.y_zero_point;
    q = q < lo_q ? lo_q : (q > hi_q ? hi_q : q);
    static_cast<uint8_t*>(out)[j] = static_cast<uint8_t>(q);
  }
}

}  // namespace

const Int8KernelSet kInt8KernelsAvx2 = {"avx2", Int8Format::kCodes, &GemmAvx2, &EpilogueAvx2};

}  // namespace onnxsparse::cpu
