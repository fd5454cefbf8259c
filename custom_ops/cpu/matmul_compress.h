// MatMulCompress (CPU): Y = alpha * (A @ W) + bias, W the dense [K, N] matrix that SPEC's
// compressed pair (values [N, K/2], index [N, ceil(K/8)]) encodes. A is [..., K] (rank 1 to 4,
// MatMul semantics) or, with transA=1, [K, M]. See DEVELOPERS.md "The ops".
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "common/activation.h"
#include "common/op_shapes.h"
#include "common/ort_api.h"
#include "cpu/cpu_isa.h"
#include "cpu/packed_weight.h"

namespace onnxsparse::cpu {

template <typename T>
struct MatMulCompressKernel {
  static constexpr size_t kFirstOptionalInput = 3;  // inputs from here on are optional
  static constexpr const char* kOpName = "MatMulCompress";

  MatMulCompressKernel(const OrtApi* api, const OrtKernelInfo* info) noexcept;

  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<T>& a,
                      const Ort::Custom::Tensor<T>& values, const Ort::Custom::Tensor<uint8_t>& index,
                      std::optional<const Ort::Custom::Tensor<T>*> bias, Ort::Custom::Tensor<T>& y);

 private:
  Ort::Status ComputeImpl(OrtKernelContext* context, const Ort::Custom::Tensor<T>& a,
                          const Ort::Custom::Tensor<T>& values, const Ort::Custom::Tensor<uint8_t>& index,
                          const Ort::Custom::Tensor<T>* bias, Ort::Custom::Tensor<T>& y);

  // Y = act(alpha * A @ W + bias), act null: none; on the fast path or the generic one (before the NaN/Inf fix-up).
  Ort::Status ComputeProduct(OrtKernelContext* context, const Ort::Custom::Tensor<T>& a,
                             const Ort::Custom::Tensor<T>& values, const Ort::Custom::Tensor<uint8_t>& index,
                             const T* bias_data, const MatMulShape& shape, T* y_data, const Activation* act);

  // The fast path: the constant weight re-laid out at creation, and the ISA that runs it.
  Ort::Status ComputeFast(OrtKernelContext* context, const T* a, int64_t m, int64_t k, const T* bias, T* y,
                          const Activation* act);

  std::unique_ptr<PackedWeight> packed_;  // null: values/index fed at run time (or invalid)
  CpuIsa isa_ = CpuIsa::kPortable;
  MatMulAttributes attrs_;
  Activation act_;  // the fused activation (attributes activation, activation_params)
  std::string init_error_;  // set by the constructor, returned by every Compute
};

}  // namespace onnxsparse::cpu
