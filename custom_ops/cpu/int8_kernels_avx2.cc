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
      const uint8_t* v = values + p * 64 + octet * 32;
      w0[o] = _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(v)));
      w1[o] = _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(v + 16)));
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
  if (size < count) {
    buffer.reset(static_cast<int32_t*>(std::aligned_alloc(64, static_cast<size_t>((count * 4 + 63) / 64 * 64))));
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

}  // namespace

const Int8KernelSet kInt8KernelsAvx2 = {"avx2", Int8Format::kCodes, &GemmAvx2};

}  // namespace onnxsparse::cpu
