// QMatMulCompress on CUDA (docs/ops.md, "int8 ops"): Y = requantize(a_scale * w_scale[n] *
// (sum_k (A[m, k] - a_zero_point) * W[k, n] + bias[n])), W given as SPEC's (values int8, index),
// Y float or uint8/int8. Inputs and variants: cuda/qop.h; the GEMM and its choice of kernel:
// cuda/qgemm_runner.h.
#pragma once
#include <string>

#include "common/ort_api.h"
#include "cuda/qgemm_runner.h"

namespace onnxsparse::cuda {

class QMatMulCompressCuda {
 public:
  static constexpr const char* kOpName = "QMatMulCompress";
  QMatMulCompressCuda(const OrtKernelInfo* info, bool a_unsigned, QOutType out) noexcept;
  Ort::Status Compute(OrtKernelContext* context) noexcept;

 private:
  bool a_unsigned_;
  QOutType out_;
  bool relu_ = false;
  std::string init_error_;  // set by the constructor, returned by every Compute
  QGemmRunner runner_;
};

}  // namespace onnxsparse::cuda
