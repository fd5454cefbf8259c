// AVX2 int8 kernel (int8_kernels.h, format kCodes). Compiled with -mavx2 and only called when cpuid
// reports it.
//
// No VNNI, and vpmaddubsw's int16 pair sums of u8 x s8 products can saturate (255 * -128 twice is
// -65280), so the products are formed in int16 and summed in pairs by vpmaddwd, exactly, into
// int32: zero-extended activations times sign-extended weights. Two ways to select each feature's
// activations, the same sums:
// - 1-2 rows (the table kernel, Tile): for each row and group of 4 activations a[0..3], a table
//   of 8 dwords holds the (a[p0], a[p1]) pair of each code as two words (one vpshufb of the
//   broadcast group, built once per task for the whole K); vpermd picks each of 8 features' dword by
//   its code (the index byte, or its high nibble: vpermd reads the low 3 bits of each lane).
// - 3 rows or more (the shuffle kernel, ShuffleTile): per pair and 8 features, the codes become two
//   vpshufb controls and the values two vectors of words, once, reused over a tile of up to 8 rows,
//   each of which selects straight from its 8 broadcast activations of the pair (no table).
// Per 8 features, pair and row either way: 2 selecting shuffles, 2 vpmaddwd, 2 vpaddd.
// Where every word of the weight's values fits (byte_pairs_fit: |v| + |v'| <= 128, e.g. 7-bit
// weights), the shuffle kernel selects the four activations of a feature's word pair as bytes in
// one dword instead and sums the word's two products with vpmaddubsw (at most 255 * 128 = 32640,
// exact), then the two words with vpmaddwd by ones: per 8 features, pair and row 1 vpshufb,
// 1 vpmaddubsw, 1 vpmaddwd, 1 vpaddd, and no sign extension. Blocks are
// the outer loop, so that a block's bytes come from memory once (prefetched ahead) and every row
// tile reuses them from cache.
#include <immintrin.h>

#include <algorithm>
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

// The weight is read once from memory (the row tiles of a block reuse it from cache). A block's
// values and index are one contiguous range of 80 bytes per pair, and blocks follow each other, so
// the pass that reads a block first prefetches kPrefetchBytes ahead of pair p's share of that range,
// running on into the next block: the hardware prefetchers lag behind where a block's two streams
// start over. (Prefetches cannot fault.)
constexpr int64_t kPrefetchBytes = 8192;  // 4096 and 8192 about alike at K = 3072-4096, 8192 ahead at K = 768; 16384 slower
constexpr int64_t kChunkPairs = 128;       // the shuffle kernel's K chunk: 1 KiB of each row of A, 10 KiB of a block

inline void Prefetch(const uint8_t* block_base, int64_t p) {
  const char* at = reinterpret_cast<const char*>(block_base + p * kInt8PairBytes + kPrefetchBytes);
  _mm_prefetch(at, _MM_HINT_T0);
  if ((p & 3) == 3) _mm_prefetch(at + 64, _MM_HINT_T0);  // 5 lines per 4 pairs
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
    Prefetch(values, p);
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

// Rows r < MR of A_u (row r at a + r * lda) times octet `octet` (8 features) of `block`, by byte
// shuffles instead of tables: per pair, each feature's code (c, c') becomes two vpshufb controls
// [p0, Z, p1, Z] and [4 + p0', Z, 4 + p1', Z] (Z: a zero byte) through a 16-byte lookup of the
// codes' positions, and its values two words each, sign-extended; both are decoded once per pair
// and reused over the MR rows, whose 8 activations of the pair are broadcast straight from A_u
// (no table). Per row: 2 vpshufb, 2 vpmaddwd, 2 vpaddd per pair and 8 features.
template <int MR, bool kPrefetch, bool kBytes>
void ShuffleTile(const Int8PackedWeight& w, const uint8_t* a, int64_t lda, int64_t block, int octet, int64_t p_begin,
                 int64_t p_end, int32_t* c, int64_t ldc) {
  // Lookup: entries 0-7 the first position of each code, 8-15 the second (the second group: + 4).
  const __m256i lut0 = _mm256_setr_epi8(0, 0, 0, 1, 1, 2, 1, 2, 1, 2, 3, 2, 3, 3, 1, 2,  //
                                        0, 0, 0, 1, 1, 2, 1, 2, 1, 2, 3, 2, 3, 3, 1, 2);
  const __m256i lut1 = _mm256_add_epi8(lut0, _mm256_set1_epi8(4));
  // Each index byte s = c | c' << 4 of the 8 features, twice per dword: [s, 0, s, 0].
  const __m256i spread = _mm256_setr_epi8(0, -1, 0, -1, 1, -1, 1, -1, 2, -1, 2, -1, 3, -1, 3, -1,  //
                                          4, -1, 4, -1, 5, -1, 5, -1, 6, -1, 6, -1, 7, -1, 7, -1);
  // Lookup indexes [c, Z, c + 8, Z]: vpshufb reads bits 0-3 (c, c' < 8: bit 7 of s is clear) and 7.
  const __m256i code_bits = _mm256_set1_epi32(static_cast<int32_t>(0x80088000u));
  const __m256i zero_high = _mm256_set1_epi32(static_cast<int32_t>(0x80008000u));
  __m256i acc[MR];
  for (int r = 0; r < MR; ++r) {
    acc[r] = p_begin == 0 ? _mm256_setzero_si256()
                          : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + r * ldc + 8 * octet));
  }
  const uint8_t* block_base = ONNXSPARSE_INT8_VALUES(w, block);
  const uint8_t* values = block_base + octet * 32;
  const uint8_t* index = ONNXSPARSE_INT8_INDEX(w, block) + octet * 8;
  for (int64_t p = p_begin; p < p_end; ++p) {
    if constexpr (kPrefetch) Prefetch(block_base, p);
    int64_t codes;
    std::memcpy(&codes, index + p * kInt8BlockN, 8);
    const __m256i twice = _mm256_shuffle_epi8(_mm256_set1_epi64x(codes), spread);
    const __m256i k0 = _mm256_or_si256(twice, code_bits);
    const __m256i k1 = _mm256_or_si256(_mm256_srli_epi16(twice, 4), code_bits);
    const __m256i control0 = _mm256_or_si256(_mm256_shuffle_epi8(lut0, k0), zero_high);
    const __m256i control1 = _mm256_or_si256(_mm256_shuffle_epi8(lut1, k1), zero_high);
    const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(values + p * 64));
    if constexpr (kBytes) {
      // [p0, 4 + p0', p1, 4 + p1']: the bytes of the word pair's four products.
      const __m256i control = _mm256_or_si256(_mm256_and_si256(control0, _mm256_set1_epi16(0xff)),
                                              _mm256_slli_epi16(control1, 8));
      for (int r = 0; r < MR; ++r) {
        int64_t eight;
        std::memcpy(&eight, a + r * lda + 8 * p, 8);
        const __m256i words = _mm256_maddubs_epi16(_mm256_shuffle_epi8(_mm256_set1_epi64x(eight), control), v);
        acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(words, _mm256_set1_epi16(1)));
      }
      continue;
    }
    const __m256i w0 = _mm256_srai_epi16(_mm256_slli_epi16(v, 8), 8);
    const __m256i w1 = _mm256_srai_epi16(v, 8);
    for (int r = 0; r < MR; ++r) {
      int64_t eight;
      std::memcpy(&eight, a + r * lda + 8 * p, 8);
      const __m256i act = _mm256_set1_epi64x(eight);
      acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(_mm256_shuffle_epi8(act, control0), w0));
      acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(_mm256_shuffle_epi8(act, control1), w1));
    }
  }
  for (int r = 0; r < MR; ++r) _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * ldc + 8 * octet), acc[r]);
}

// The first tile over a block prefetches its bytes.
template <bool kPrefetch, bool kBytes>
void ShuffleRows(const Int8PackedWeight& w, const uint8_t* a, int64_t lda, int64_t rows, int64_t block, int octet,
                 int64_t p_begin, int64_t p_end, int32_t* c, int64_t ldc) {
  switch (rows) {
    case 8: ShuffleTile<8, kPrefetch, kBytes>(w, a, lda, block, octet, p_begin, p_end, c, ldc); break;
    case 7: ShuffleTile<7, kPrefetch, kBytes>(w, a, lda, block, octet, p_begin, p_end, c, ldc); break;
    case 6: ShuffleTile<6, kPrefetch, kBytes>(w, a, lda, block, octet, p_begin, p_end, c, ldc); break;
    case 5: ShuffleTile<5, kPrefetch, kBytes>(w, a, lda, block, octet, p_begin, p_end, c, ldc); break;
    case 4: ShuffleTile<4, kPrefetch, kBytes>(w, a, lda, block, octet, p_begin, p_end, c, ldc); break;
    case 3: ShuffleTile<3, kPrefetch, kBytes>(w, a, lda, block, octet, p_begin, p_end, c, ldc); break;
    case 2: ShuffleTile<2, kPrefetch, kBytes>(w, a, lda, block, octet, p_begin, p_end, c, ldc); break;
    default: ShuffleTile<1, kPrefetch, kBytes>(w, a, lda, block, octet, p_begin, p_end, c, ldc); break;
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

// 1-2 rows: the table kernel, cheaper per pair than decoding shuffle controls (and, measured here,
// no slower than a byte-pair variant of it: the or that joins two tables' picks costs what the sign
// extensions save).
void TableGemm(const Int8PackedWeight& w, const Int8Task& task) {
  const int64_t groups = 2 * w.pairs;
  int32_t* tab = TableScratch(task.m * groups * 8);
  BuildTables(task.a, task.lda, task.m, groups, tab);
  for (int64_t b = task.block_begin; b < task.block_end; ++b) {
    int32_t* cb = task.c + (b - task.block_begin) * kInt8BlockN;
    if (task.m == 2) {
      Tile<2, 2>(w, tab, groups, b, 0, cb, task.ldc);
    } else {
      Tile<1, 2>(w, tab, groups, b, 0, cb, task.ldc);
    }
  }
}

// 3 rows or more: the shuffle kernel, in byte pairs where the weight allows.
template <bool kBytes>
void ShuffleGemm(const Int8PackedWeight& w, const Int8Task& task) {
  // Row tiles of at most 8, as even as possible; per block, both octets over every tile while the
  // block's bytes are in cache.
  constexpr int64_t kMr = 8;
  const int64_t tiles = (task.m + kMr - 1) / kMr;
  for (int64_t b = task.block_begin; b < task.block_end; ++b) {
    int32_t* cb = task.c + (b - task.block_begin) * kInt8BlockN;
    // K in chunks of kChunkPairs pairs: a chunk's activations of every row and its share of the block
    // stay in L1 over both octets and every tile; the sums carry over in C.
    for (int64_t p0 = 0; p0 < w.pairs; p0 += kChunkPairs) {
      const int64_t p1 = std::min(w.pairs, p0 + kChunkPairs);
      for (int octet = 0; octet < 2; ++octet) {
        int64_t i = 0;
        for (int64_t t = 0; t < tiles; ++t) {
          const int64_t rows = (task.m - i) / (tiles - t);
          const uint8_t* at = task.a + i * task.lda;
          if (octet == 0 && t == 0) {
            ShuffleRows<true, kBytes>(w, at, task.lda, rows, b, octet, p0, p1, cb + i * task.ldc, task.ldc);
          } else {
            ShuffleRows<false, kBytes>(w, at, task.lda, rows, b, octet, p0, p1, cb + i * task.ldc, task.ldc);
          }
          i += rows;
        }
      }
    }
  }
}

void GemmAvx2(const Int8PackedWeight& w, const Int8Task& task) {
  if (task.m <= 2) {
    TableGemm(w, task);
  } else if (w.byte_pairs_fit) {
    ShuffleGemm<true>(w, task);
  } else {
    ShuffleGemm<false>(w, task);
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
    if (ep.out == Int8Out::kHalf) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + j),
                       _mm256_cvtps_ph(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
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
    if (ep.out == Int8Out::kHalf) {
      static_cast<uint16_t*>(out)[j] = static_cast<uint16_t>(
          _mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), 0));
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
