// Conv2dCompress (CPU): ONNX Conv on NCHW whose weight [OC, C/group, KH, KW] comes in SPEC's
// compressed form (values [OC, K/2], index [OC, ceil(K/8)], K = KH*KW*C/group in (kh, kw, c)
// order). Computed as one SparseGemm per (image, group): im2col of a tile of output pixels into
// the panel, in the weight's (kh, kw, c) order, times the group's compressed rows. With
// layout="NHWC" (a CUDA layout; here only so that such a model also runs on the CPU) the input is
// transposed to NCHW and the output back.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/activation.h"
#include "common/op_shapes.h"
#include "common/ort_api.h"
#include "cpu/cpu_isa.h"
#include "cpu/packed_weight.h"

namespace onnxsparse::cpu {

template <typename T>
struct Conv2dCompressKernel {
  static constexpr size_t kFirstOptionalInput = 3;  // inputs from here on are optional
  static constexpr const char* kOpName = "Conv2dCompress";

  Conv2dCompressKernel(const OrtApi* api, const OrtKernelInfo* info) noexcept;

  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<T>& x,
                      const Ort::Custom::Tensor<T>& values, const Ort::Custom::Tensor<uint8_t>& index,
                      std::optional<const Ort::Custom::Tensor<T>*> bias, Ort::Custom::Tensor<T>& y);

 private:
  Ort::Status ComputeImpl(OrtKernelContext* context, const Ort::Custom::Tensor<T>& x,
                          const Ort::Custom::Tensor<T>& values, const Ort::Custom::Tensor<uint8_t>& index,
                          const Ort::Custom::Tensor<T>* bias, Ort::Custom::Tensor<T>& y);

  // The NCHW convolution of x_data into y_data (both NCHW), NaN/Inf fix-up and activation included.
  Ort::Status ComputeNchw(OrtKernelContext* context, const T* x_data, const Ort::Custom::Tensor<T>& values,
                          const Ort::Custom::Tensor<uint8_t>& index, const T* bias_data, const ConvGeometry& geo,
                          T* y_data);

  // The convolution on the fast path or the generic one (before the NaN/Inf fix-up).
  Ort::Status ComputeProduct(OrtKernelContext* context, const T* x_data, const Ort::Custom::Tensor<T>& values,
                             const Ort::Custom::Tensor<uint8_t>& index, const T* bias_data, const ConvGeometry& geo,
                             T* y_data, const Activation* act);

  ConvAttributes attrs_;
  bool nhwc_ = false;  // attribute layout="NHWC"
  std::unique_ptr<PackedWeight> packed_;  // the constant weight re-laid out at creation, else null
  CpuIsa isa_ = CpuIsa::kPortable;
  Activation act_;  // the fused activation (attributes activation, activation_params)
  std::string init_error_;  // set by the constructor, returned by every Compute
};

}  // namespace onnxsparse::cpu
