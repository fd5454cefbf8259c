// AVX-512 int8 kernel (int8_kernels.h), with VNNI (vpdpbusd) and VBMI (vpmultishiftqb): compiled with
// -mavx512f/bw/vl/dq plus the target pragma below, and only called when cpuid reports both
// (Int8Kernels falls back to the AVX2 kernel otherwise).
//
// Per block of 16 features and pair of groups: the 16 index bytes are widened to one per dword,
// vpmultishiftqb spreads each byte's four 2-bit positions over the dword's four bytes, and an OR
// adds 4 to the second group's two: a byte-shuffle control [p0, p1, 4+p0', 4+p1'] per feature.
// Each row's 8 activations of the pair are broadcast, vpshufb selects each feature's four, and
// vpdpbusd adds the four u8 x s8 products into the feature's int32 lane (no saturation). The
// controls and the 64 value bytes are loaded once per pair and reused over a register tile of
// up to 8 rows x 2 blocks.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstring>

#include "cpu/int8_kernels.h"

#pragma GCC target("avx512vnni,avx512vbmi")

namespace onnxsparse::cpu {

namespace {

struct Constants {
  __m512i shifts, low2, second_group;
  Constants()
      : shifts(_mm512_set1_epi64(0x2624222006040200LL)),  // bit offsets 0,2,4,6 of dword 0 and of dword 1
        low2(_mm512_set1_epi8(0x03)),
        second_group(_mm512_set1_epi32(0x04040000)) {}
};

inline __m512i Controls(const uint8_t* index16, const Constants& k) {
  const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(index16)));
  const __m512i fields = _mm512_multishift_epi64_epi8(k.shifts, bytes);
  return _mm512_ternarylogic_epi32(fields, k.low2, k.second_group, 0xEA);  // (fields & low2) | second_group
}

template <int MR, int NB>
void Tile(const Int8PackedWeight& w, const uint8_t* a, int64_t lda, int64_t block, int32_t* c, int64_t ldc,
          const Constants& k) {
  __m512i acc[MR][NB];
  #pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    #pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_setzero_si512();
  }
  const uint8_t* values[NB];
  const uint8_t* index[NB];
  for (int j = 0; j < NB; ++j) {
    values[j] = ONNXSPARSE_INT8_VALUES(w, block + j);
    index[j] = ONNXSPARSE_INT8_INDEX(w, block + j);
  }
  for (int64_t p = 0; p < w.pairs; ++p) {
    __m512i control[NB], weights[NB];
    #pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) {
      control[j] = Controls(index[j] + p * kInt8BlockN, k);
      weights[j] = _mm512_load_si512(values[j] + p * 64);
    }
    #pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      int64_t a8;
      std::memcpy(&a8, a + r * lda + 8 * p, 8);
      const __m512i act = _mm512_set1_epi64(a8);
      #pragma GCC unroll 4
      for (int j = 0; j < NB; ++j) {
        acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], _mm512_shuffle_epi8(act, control[j]), weights[j]);
      }
    }
  }
  #pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    #pragma GCC unroll 4
    for (int j = 0; j < NB; ++j) _mm512_storeu_si512(c + r * ldc + j * kInt8BlockN, acc[r][j]);
  }
}

template <int NB>
void Rows(const Int8PackedWeight& w, const Int8Task& task, int64_t block, const Constants& k) {
  int32_t* c = task.c + (block - task.block_begin) * kInt8BlockN;
  int64_t i = 0;
  for (; i + 8 <= task.m; i += 8) Tile<8, NB>(w, task.a + i * task.lda, task.lda, block, c + i * task.ldc, task.ldc, k);
  const uint8_t* a = task.a + i * task.lda;
  c += i * task.ldc;
  switch (task.m - i) {
    case 7: Tile<7, NB>(w, a, task.lda, block, c, task.ldc, k); break;
    case 6: Tile<6, NB>(w, a, task.lda, block, c, task.ldc, k); break;
    case 5: Tile<5, NB>(w, a, task.lda, block, c, task.ldc, k); break;
    case 4: Tile<4, NB>(w, a, task.lda, block, c, task.ldc, k); break;
    case 3: Tile<3, NB>(w, a, task.lda, block, c, task.ldc, k); break;
    case 2: Tile<2, NB>(w, a, task.lda, block, c, task.ldc, k); break;
    case 1: Tile<1, NB>(w, a, task.lda, block, c, task.ldc, k); break;
    default: break;
  }
}

void GemmAvx512(const Int8PackedWeight& w, const Int8Task& task) {
  const Constants k;
  int64_t b = task.block_begin;
  for (; b + 2 <= task.block_end; b += 2) Rows<2>(w, task, b, k);
  if (b < task.block_end) Rows<1>(w, task, b, k);
}

// The epilogue, 16 features a vector (the last masked); the same numbers as the portable one:
// cvtps2dq with round-to-nearest-even as its explicit rounding, after a clamp that sends NaN low.
void EpilogueAvx512(const int32_t* acc, int64_t count, const Int8Epilogue& ep, int64_t n0, void* out) {
  const int32_t* corr = ep.corr + n0;
  const float* scale = ep.scale + n0;
  const bool quantized = ep.out != Int8Out::kFloat && ep.out != Int8Out::kHalf;
  const __m512 lo_f = _mm512_set1_ps(-4194304.0f), hi_f = _mm512_set1_ps(4194304.0f);
  const __m512i zp = _mm512_set1_epi32(ep.y_zero_point);
  const __m512i lo = _mm512_set1_epi32(ep.out == Int8Out::kUint8 ? 0 : -128);
  const __m512i hi = _mm512_set1_epi32(ep.out == Int8Out::kUint8 ? 255 : 127);
  for (int64_t j = 0; j < count; j += 16) {
    const __mmask16 mask = count - j >= 16 ? static_cast<__mmask16>(0xFFFF)
                                           : static_cast<__mmask16>((1u << (count - j)) - 1u);
    const __m512i sum = _mm512_add_epi32(_mm512_maskz_loadu_epi32(mask, acc + j), _mm512_maskz_loadu_epi32(mask, corr + j));
    __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), _mm512_maskz_loadu_ps(mask, scale + j));
    if (ep.relu) f = _mm512_max_ps(f, _mm512_setzero_ps());
    if (ep.out == Int8Out::kHalf) {
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(out) + j, mask,
                               _mm512_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      continue;
    }
    if (!quantized) {
      _mm512_mask_storeu_ps(static_cast<float*>(out) + j, mask, f);
      continue;
    }
    f = _mm512_min_ps(_mm512_max_ps(f, lo_f), hi_f);  // max first: NaN becomes lo_f
    __m512i q = _mm512_cvt_roundps_epi32(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(q, zp), lo), hi);
    _mm_mask_storeu_epi8(static_cast<uint8_t*>(out) + j, mask, _mm512_cvtepi32_epi8(q));
  }
}

}  // namespace

const Int8KernelSet kInt8KernelsAvx512 = {"avx512", Int8Format::kPositions, &GemmAvx512, &EpilogueAvx512};

}  // namespace onnxsparse::cpu
