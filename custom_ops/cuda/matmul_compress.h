// MatMulCompress on CUDA: Y = alpha * (A @ W) + bias, W given as SPEC's (values, index).
// Inputs: A [..., K] (or [K, M] with transA=1), values [N, K/2], index [N, ceil(K/8)] uint8,
// bias [N] (optional). Attributes: alpha (1.0), transA (0). See DEVELOPERS.md.
#pragma once
#include <optional>
#include <string>

#include "common/activation.h"
#include "common/op_shapes.h"
#include "common/ort_api.h"
#include "cuda/sparse_gemm_runner.h"

namespace onnxsparse::cuda {

template <typename OrtT>
struct MatMulCompressCuda {
  MatMulCompressCuda(const OrtApi* api, const OrtKernelInfo* info) noexcept;
  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<OrtT>& a,
                      const Ort::Custom::Tensor<OrtT>& values, const Ort::Custom::Tensor<uint8_t>& index,
                      std::optional<const Ort::Custom::Tensor<OrtT>*> bias, Ort::Custom::Tensor<OrtT>& y);

 private:
  MatMulAttributes attrs_;
  Activation act_;  // the fused activation (attributes activation, activation_params)
  std::string init_error_;  // set by the constructor, returned by every Compute
  SparseGemmRunner runner_;
};

}  // namespace onnxsparse::cuda
