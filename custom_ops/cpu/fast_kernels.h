// The inner kernels over a PackedWeight, one set per ISA (fast_kernels_avx512.cc,
// fast_kernels_avx2.cc, fast_kernels_portable.cc), chosen at run time through FastKernels(isa).
//
// Two shapes of the same product C = alpha * A @ W + bias, all in fp32:
// - Rows: A row-major [m, K] (MatMul). Vectorised over 16 output features n: per group and row of
//   A, its 4 inputs are broadcast and permuted by sel (see packed_weight.h), two FMAs; the records
//   are loaded once per group and reused over a register tile of rows (AVX-512: 8 rows x 32 n).
//   It reads 9 bytes per group and feature (dense: 16), the win where the product is
//   memory-bound (small M); compute-bound, its one permute per FMA caps it near dense speed.
// - Cols: A given as a column panel P[k][j] (row k of the reduction holds pixels j contiguous:
//   Conv's im2col, the channels of an NCHW image, or A transposed). Vectorised over pixels j: per
//   group and output feature, sel picks two panel rows, each times a broadcast value (AVX-512:
//   4 features x 64 pixels). C is [n][j] (Conv's NCHW output). No permutes: one load per FMA,
//   so it beats Rows where the product is compute-bound (large M).
// Both cover the groups [g_begin, g_end) of K (cache blocking): the first block of K writes C
// (accumulate = false), later ones add to it, and the last (final) applies alpha and bias.
#pragma once
#include <cstdint>

#include "cpu/cpu_isa.h"
#include "cpu/packed_weight.h"

namespace onnxsparse::cpu {

struct KBlock {
  int64_t g_begin = 0, g_end = 0;  // groups of K
  bool accumulate = false;         // add to C (an earlier block of K wrote it)
  bool final = true;               // C = alpha * (C + this block) + bias
  float alpha = 1.0f;
  const float* bias = nullptr;     // [rows] or null
};

// The size of K blocks of at most `most` groups that cut `groups` into equal parts (no short last
// block paying a whole block's overhead).
inline int64_t BalancedBlock(int64_t groups, int64_t most) {
  const int64_t blocks = (groups + most - 1) / most;
  return blocks > 0 ? (groups + blocks - 1) / blocks : 1;
}

struct RowsTask {
  const float* a = nullptr;  // A[i, kk] at a[i * lda + kk], kk absolute along K
  int64_t lda = 0;
  int64_t m = 0;             // rows of A
  int64_t block_begin = 0, block_end = 0;  // blocks of 16 output features
  float* c = nullptr;        // C[i, n] at c[i * ldc + n], n absolute
  int64_t ldc = 0;
  KBlock kb;
};

// The Cols kernel's panel: strips of kStripCols pixels, each [rows of the K block][kStripCols]
// contiguous and 64-byte aligned (no cache-line splits, no power-of-two strides between rows).
constexpr int64_t kStripCols = 64;

struct ColsTask {
  const float* p = nullptr;  // P[kk][j] at p[(j / 64) * strip_stride + (kk - 4 * g_begin) * 64 + j % 64]
  int64_t strip_stride = 0;
  int64_t strip_cols = kStripCols;  // W: 64 (cols), 16 or 32 (cols_narrow)
  int64_t cols = 0;          // pixels j in [0, cols)
  int64_t n_begin = 0, n_end = 0;  // output features
  float* c = nullptr;        // C[n, j] at c[(n - n_begin) * ldc + j]
  int64_t ldc = 0;
  KBlock kb;
};

struct FastKernelSet {
  void (*rows)(const PackedWeight& w, const RowsTask& task);
  void (*cols)(const PackedWeight& w, const ColsTask& task);
  void (*half_to_float)(const uint16_t* src, float* dst, int64_t count);
  void (*float_to_half)(const float* src, uint16_t* dst, int64_t count);
  // Cols over a panel of narrow strips (MatMul with few rows of A): strips of task.strip_cols = W
  // pixels (16 or 32; P[kk][j] at p[(j / W) * strip_stride + (kk - 4 * g_begin) * W + j % W],
  // 64-byte aligned, zero past the last pixel up to W), a register tile over more features.
  // Null where an ISA has none.
  void (*cols_narrow)(const PackedWeight& w, const ColsTask& task) = nullptr;
  // MatMul runs the Rows kernel at every M (never Cols): where Rows' permutes cost less than
  // Cols' loads (AVX2, see fast_kernels_avx2.cc).
  bool rows_only = false;
};

const FastKernelSet& FastKernels(CpuIsa isa);

// Defined in the ISA files.
extern const FastKernelSet kFastKernelsPortable;
extern const FastKernelSet kFastKernelsAvx2;
extern const FastKernelSet kFastKernelsAvx512;

}  // namespace onnxsparse::cpu
