// The int8 product of QMatMulCompress and QConv2dCompress (docs/ops.md "int8 ops"): the raw
// integer sum of an inner kernel (int8_kernels.h) over tiles of A's rows and the weight's blocks,
// on ONNX Runtime's thread pool, then the epilogue on each tile while it is in cache:
//
//   acc  = sum_k A_u[m, k] W[k, n] + corr[n]        (int32, wrapping: exact whenever the true
//                                                     result fits int32, docs/ops.md's bound)
//   corr = bias[n] - zp_u * row_sum[n]              zp_u = a_zero_point (+128 for int8 A)
//   f    = float(acc) * scale[n]                    scale = a_scale * w_scale[n] (float Y) or
//                                                     a_scale * w_scale[n] / y_scale (quantized Y)
//   Y    = f, or saturate(round_half_even(f) + y_zero_point); Relu: f = max(f, 0) first.
#pragma once
#include <cstdint>
#include <string>

#include "common/ort_api.h"
#include "cpu/int8_kernels.h"

namespace onnxsparse::cpu {

// The largest K whose sum docs/ops.md guarantees exact in int32.
constexpr int64_t kMaxInt8Reduction = 131072;

// Y[i, n] at y + (i * stride_m + n * stride_n) elements of the output type, for the rows i < m of
// A_u (a, lda: see Int8Task) and the features n of convolution group `group` (n counted from the
// group's first feature; corr and scale are indexed by the weight's row). False when a task failed
// (out of memory).
bool RunInt8Gemm(OrtKernelContext* context, const Int8KernelSet& kernels, const Int8PackedWeight& w, int64_t group,
                 const uint8_t* a, int64_t lda, int64_t m, const Int8Epilogue& epilogue, void* y, int64_t stride_m,
                 int64_t stride_n);

// The row stride of A_u for this weight: pairs * 8 bytes and 64 more (rows 4 KiB apart would share
// L1 sets).
inline int64_t Int8RowBytes(const Int8PackedWeight& w) { return w.pairs * 8 + 64; }

// Copies rows [m, k] of A (uint8, or int8 when `flip` : shifted by +128) into A_u rows of lda bytes,
// zero-padded past k.
void PrepareInt8Rows(const uint8_t* a, int64_t m, int64_t k, bool flip, uint8_t* dst, int64_t lda);

}  // namespace onnxsparse::cpu
