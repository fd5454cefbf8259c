// The int8 kernels' layout of a 2:4 weight and their inner kernels, one set per ISA
// (int8_kernels_portable.cc, int8_kernels_avx2.cc, int8_kernels_avx512.cc), chosen at run time.
//
// The product they compute is the raw integer sum C[m, n] = sum_k A_u[m, k] * W[k, n], A_u the
// activations as uint8 (int8 activations are shifted by +128 beforehand; the caller corrects
// with the weight's row sums, see int8_gemm.h) and W the int8 weight. No saturation anywhere:
// AVX-512 sums 4 u8 x s8 products per int32 lane with VNNI (vpdpbusd); AVX2 widens to int16
// (the selected activations are zero-extended by the byte shuffle itself, the weights
// sign-extended) and sums pairs with vpmaddwd; the portable kernel is plain int32 C++.
//
// Layout. A weight is [rows, K] (one row per output feature), K = 4 * groups. Groups are taken in
// pairs (8 elements of K: a *pair*; an odd last group is paired with an empty one), output
// features 16 at a time (a *block*; rows past the last hold zeros). For conv with group > 1, each
// convolution group's rows start a new block. Per block, two sequential streams:
//   values[pair][16][4]  int8: the 4 kept values of the pair for each feature (SPEC's order:
//                        values[n, 4p .. 4p+3]), 64 bytes, 64-byte aligned
//   index[pair][16]      one byte per feature: the element positions (0..3 within its group) of
//                        the 4 kept values, 2 bits each, first value in bits 0-1:
//                        p0 | p1 << 2 | p0' << 4 | p1' << 6 (p1 = 1 + SPEC's index1)
// so a block costs 80 bytes per pair: 10 bits per kept value, against 16 bits for a dense
// weight. With the pair's 8 activations a[0..7], feature n's contribution is
//   a[p0] v0 + a[p1] v1 + a[4 + p0'] v2 + a[4 + p1'] v3.
// The AVX-512 kernel turns the index byte into a byte-shuffle control in registers
// (vpmultishiftqb), so nothing of it is stored expanded (format kPositions, also the portable one's).
//
// The AVX2 kernel's format (kCodes) keeps the 80 bytes but codes each group's pair of positions
// (p0, p1) as one of 8 values, c = (0,1) (0,2) (0,3) (1,2) (1,3) (2,3) (1,1) (2,2) (a group with
// p0 > p1 is stored swapped, values too; p0 == p1, both values added at one element, has codes of
// its own: every SPEC encoding has a code), in index bytes c | c' << 4, and orders the values of a
// pair so that the two groups' values of a slot share a 16-bit word (first group low byte):
//   values[pair][octet 0..1][8 features][slot 0..1][group 0..1]
// For 1-2 rows of A the kernel builds, per row and group, the 8 possible (a[p0], a[p1]) as a table
// of 8 dwords and picks each feature's with vpermd (the code as the dword index); for more rows it
// turns the codes into vpshufb controls once per pair and selects from each row's activations
// directly, see int8_kernels_avx2.cc. Where the weight's byte pairs fit (byte_pairs_fit), the
// latter sums a word's two products with vpmaddubsw instead of widening each to int16.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "cpu/cpu_isa.h"

namespace onnxsparse::cpu {

constexpr int64_t kInt8BlockN = 16;

enum class Int8Format { kPositions, kCodes };

// (p0, p1) of each code of the kCodes format.
constexpr int kInt8CodeFirst[8] = {0, 0, 0, 1, 1, 2, 1, 2};
constexpr int kInt8CodeSecond[8] = {1, 2, 3, 2, 3, 3, 1, 2};
constexpr int64_t kInt8PairBytes = 80;  // per block and pair: 64 value bytes + 16 index bytes

struct Int8PackedWeight {
  int64_t rows = 0;            // output features (N or OC)
  int64_t k = 0;               // reduction length (a multiple of 4)
  int64_t pairs = 0;           // ceil(k / 8)
  int64_t conv_groups = 1;     // convolution groups; rows / conv_groups features each
  int64_t rows_per_group = 0;  // rows / conv_groups
  int64_t blocks_per_group = 0;
  int64_t blocks = 0;          // conv_groups * blocks_per_group
  int64_t block_stride = 0;    // bytes from one block to the next (a multiple of 64)
  int64_t index_offset = 0;    // bytes from a block's values to its index: pairs * 64
  Int8Format format = Int8Format::kPositions;

  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, Free> data;
  const uint8_t* base = nullptr;  // data.get(), a plain field for the ISA files
  std::unique_ptr<int32_t[]> row_sums;  // sum of each row's values (rows entries)
  // kCodes: every two values that share a 16-bit word (a slot's values of a pair's two groups) have
  // |v| + |v'| <= 128, so that 255 * (|v| + |v'|) <= 32640 fits int16 and vpmaddubsw sums their
  // products exactly. True of every weight quantized to 7 bits (|v| <= 64: reduce_range).
  bool byte_pairs_fit = false;
};

// The block's values and index. Macros, not inline functions, for the ISA files (see
// packed_weight.h: the linker could keep an AVX copy of a shared inline function for everyone).
#define ONNXSPARSE_INT8_VALUES(w, block) ((w).base + (block) * (w).block_stride)
#define ONNXSPARSE_INT8_INDEX(w, block) ((w).base + (block) * (w).block_stride + (w).index_offset)

// Packs SPEC's int8 pair (values [rows, K/2], index [rows, ceil(K/8)]) with `conv_groups` groups of
// rows, in `format`. Returns null and sets `error` when an index field holds the invalid value 3 or rows is not
// a multiple of conv_groups; throws std::bad_alloc when out of memory.
std::unique_ptr<Int8PackedWeight> PackInt8Weight(const int8_t* values, const uint8_t* index, int64_t rows, int64_t k,
                                                 int64_t conv_groups, Int8Format format, std::string& error);

// One call of an inner kernel: C[i, j] = sum_k A_u[i, k] * W[k, n0 + j] for rows i < m of A and the
// features of blocks [block_begin, block_end) (n0 = 16 * block_begin within the weight's blocks).
// A_u row i at a + i * lda, zero-padded to pairs * 8 bytes; C row i at c + i * ldc, 16 int32 per
// block (features past the last row of a block are computed too: zeros).
struct Int8Task {
  const uint8_t* a = nullptr;
  int64_t lda = 0;
  int64_t m = 0;
  int64_t block_begin = 0, block_end = 0;
  int32_t* c = nullptr;
  int64_t ldc = 0;
};

// kHalf: the float value rounded to fp16 (to nearest even), as a Cast to float16 rounds it.
enum class Int8Out { kFloat, kUint8, kInt8, kHalf };

// Bytes of one output element.
constexpr int64_t Int8OutBytes(Int8Out out) {
  return out == Int8Out::kFloat ? 4 : out == Int8Out::kHalf ? 2 : 1;
}

// The epilogue of int8_gemm.h: acc + corr[n] (int32, wrapping), times scale[n] in fp32, Relu, then
// float (or fp16) out, or round half to even, + y_zero_point, saturate.
struct Int8Epilogue {
  const int32_t* corr = nullptr;  // [rows]: bias - zp_u * row_sum
  const float* scale = nullptr;   // [rows]
  bool relu = false;
  Int8Out out = Int8Out::kFloat;
  int32_t y_zero_point = 0;
};

struct Int8KernelSet {
  const char* name;
  Int8Format format;  // the layout its weights are packed in
  void (*gemm)(const Int8PackedWeight& w, const Int8Task& task);
  // The epilogue of `count` consecutive features from feature n0 (corr, scale at n0): acc[j] ->
  // out[j] (float, uint8 or int8 as ep.out). The same results on every path.
  void (*epilogue)(const int32_t* acc, int64_t count, const Int8Epilogue& ep, int64_t n0, void* out);
};

// The set for `isa`: AVX-512 needs VNNI and VBMI too (else the AVX2 set serves it).
const Int8KernelSet& Int8Kernels(CpuIsa isa);

// Defined in the ISA files.
extern const Int8KernelSet kInt8KernelsPortable;
extern const Int8KernelSet kInt8KernelsAvx2;
extern const Int8KernelSet kInt8KernelsAvx512;

}  // namespace onnxsparse::cpu
