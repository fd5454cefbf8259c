// Conv2dCompress on CUDA: ONNX Conv (NCHW) with SPEC's compressed weight, as
// NCHW -> NHWC transpose, im2col in (kh, kw, c) order, the sparse GEMM per group into NHWC, and an
// NHWC -> NCHW transpose with the bias fused. Attributes as ONNX Conv (see DEVELOPERS.md).
#pragma once
#include <optional>
#include <string>

#include "common/activation.h"
#include "common/op_shapes.h"
#include "common/ort_api.h"
#include "cuda/sparse_gemm_runner.h"

namespace onnxsparse::cuda {

template <typename OrtT>
struct Conv2dCompressCuda {
  Conv2dCompressCuda(const OrtApi* api, const OrtKernelInfo* info) noexcept;
  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<OrtT>& x,
                      const Ort::Custom::Tensor<OrtT>& values, const Ort::Custom::Tensor<uint8_t>& index,
                      std::optional<const Ort::Custom::Tensor<OrtT>*> bias, Ort::Custom::Tensor<OrtT>& y);

 private:
  ConvAttributes attrs_;
  Activation act_;  // the fused activation (attributes activation, activation_params)
  std::string init_error_;  // set by the constructor, returned by every Compute
  SparseGemmRunner runner_;
};

}  // namespace onnxsparse::cuda
