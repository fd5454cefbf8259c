// AVX2 int8 kernel (int8_kernels.h). Compiled with -mavx2 and only called when cpuid reports it.
//
// No VNNI and no saturation: vpmaddubsw's int16 pair sums of u8 x s8 products can overflow, so the
// products are formed in int16 instead. Per 4 features and pair of groups (one ymm: a dword per
// feature and group), the control word of each kept value is `0x80 << 8 | position`: vpshufb then
// zero-extends the selected activation into a word by itself; the weights are sign-extended
// (vpmovsxbw of the 16 value bytes, whose order already matches), and vpmaddwd sums each group's
// two products exactly into an int32 lane. The controls come from the 4 index bytes with one
// shuffle (the byte into the high half of 4 words), one vpmulhuw (shifts 0, 2, 4, 6), an AND and
// an OR. The two lanes of a feature are added when the tile is stored.
#include <immintrin.h>

#include <cstring>

#include "cpu/int8_kernels.h"

namespace onnxsparse::cpu {

namespace {

struct Constants {
  __m256i spread, shifts, low2, high;
  Constants()
      : spread(_mm256_setr_epi8(-128, 0, -128, 0, -128, 0, -128, 0, -128, 1, -128, 1, -128, 1, -128, 1,  //
                                -128, 2, -128, 2, -128, 2, -128, 2, -128, 3, -128, 3, -128, 3, -128, 3)),
        shifts(_mm256_set1_epi64x(0x0004001000400100LL)),  // words 256, 64, 16, 4: >> 0, 2, 4, 6 of b << 8
        low2(_mm256_set1_epi16(0x0003)),
        high(_mm256_set1_epi64x(static_cast<int64_t>(0x8004800480008000ULL))) {}
};

// The controls of 4 features (their index bytes at index4).
inline __m256i Controls(const uint8_t* index4, const Constants& k) {
  int32_t bytes;
  std::memcpy(&bytes, index4, 4);
  const __m256i words = _mm256_shuffle_epi8(_mm256_set1_epi32(bytes), k.spread);
  const __m256i fields = _mm256_mulhi_epu16(words, k.shifts);
  return _mm256_or_si256(_mm256_and_si256(fields, k.low2), k.high);
}

// Rows i < MR of A times NQ quads of 4 features starting at feature `first` of `block`.
template <int MR, int NQ>
void Tile(const Int8PackedWeight& w, const uint8_t* a, int64_t lda, int64_t block, int first, int32_t* c, int64_t ldc,
          const Constants& k) {
  __m256i acc[MR][NQ];
  for (int r = 0; r < MR; ++r) {
    for (int q = 0; q < NQ; ++q) acc[r][q] = _mm256_setzero_si256();
  }
  const uint8_t* values = ONNXSPARSE_INT8_VALUES(w, block) + 4 * first;
  const uint8_t* index = ONNXSPARSE_INT8_INDEX(w, block) + first;
  for (int64_t p = 0; p < w.pairs; ++p) {
    __m256i control[NQ], weights[NQ];
    for (int q = 0; q < NQ; ++q) {
      control[q] = Controls(index + p * kInt8BlockN + 4 * q, k);
      weights[q] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(values + p * 64 + 16 * q)));
    }
    for (int r = 0; r < MR; ++r) {
      int64_t a8;
      std::memcpy(&a8, a + r * lda + 8 * p, 8);
      const __m256i act = _mm256_set1_epi64x(a8);
      for (int q = 0; q < NQ; ++q) {
        acc[r][q] = _mm256_add_epi32(acc[r][q], _mm256_madd_epi16(_mm256_shuffle_epi8(act, control[q]), weights[q]));
      }
    }
  }
  for (int r = 0; r < MR; ++r) {
    for (int q = 0; q + 1 < NQ; q += 2) {
      // Lanes (feature, group): the sum of each feature's two groups, features in order.
      const __m256i sums = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][q], acc[r][q + 1]), 0xD8);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc + first + 4 * q), sums);
    }
  }
}

template <int NQ>
void Rows(const Int8PackedWeight& w, const Int8Task& task, int64_t block, int first, const Constants& k) {
  constexpr int kMr = NQ == 4 ? 1 : 4;
  int32_t* c = task.c + (block - task.block_begin) * kInt8BlockN;
  int64_t i = 0;
  for (; i + kMr <= task.m; i += kMr) {
    Tile<kMr, NQ>(w, task.a + i * task.lda, task.lda, block, first, c + i * task.ldc, task.ldc, k);
  }
  const uint8_t* a = task.a + i * task.lda;
  c += i * task.ldc;
  switch (task.m - i) {
    case 3: Tile<3, NQ>(w, a, task.lda, block, first, c, task.ldc, k); break;
    case 2: Tile<2, NQ>(w, a, task.lda, block, first, c, task.ldc, k); break;
    case 1: Tile<1, NQ>(w, a, task.lda, block, first, c, task.ldc, k); break;
    default: break;
  }
}

void GemmAvx2(const Int8PackedWeight& w, const Int8Task& task) {
  const Constants k;
  for (int64_t b = task.block_begin; b < task.block_end; ++b) {
    if (task.m == 1) {
      Rows<4>(w, task, b, 0, k);  // one row: the whole block in one tile
    } else {
      Rows<2>(w, task, b, 0, k);
      Rows<2>(w, task, b, 8, k);
    }
  }
}

}  // namespace

const Int8KernelSet kInt8KernelsAvx2 = {"avx2", &GemmAvx2};

}  // namespace onnxsparse::cpu
