// QMatMulCompress (CPU): the int8 MatMul of docs/ops.md "int8 ops",
// Y = requantize(a_scale * w_scale[n] * (sum_k (A[m, k] - a_zero_point) * W[k, n] + bias[n])),
// W the int8 [K, N] matrix that SPEC's compressed pair (values [N, K/2] int8, index) encodes.
// A is [..., K] (rank 1 to 4, MatMul semantics), uint8 or int8; Y is float, uint8 or int8.
#pragma once
#include "common/ort_api.h"
#include "cpu/int8_op.h"

namespace onnxsparse::cpu {

struct QMatMulCompressKernel : Int8KernelBase {
  static constexpr const char* kOpName = "QMatMulCompress";

  QMatMulCompressKernel(const OrtKernelInfo* info, Int8Types types) noexcept;
  Ort::Status Compute(OrtKernelContext* context) noexcept;

 private:
  Ort::Status ComputeImpl(OrtKernelContext* context);
};

}  // namespace onnxsparse::cpu
