// CompressOp (CPU): a dense 2:4-sparse weight in its ONNX layout -> SPEC's compressed pair
// (values [rows, K/2], index [rows, ceil(K/8)]). Attribute `layout`: "kn" (W[K, N]), "nk"
// (B[N, K]) or "oihw" (W[OC, C/group, KH, KW], K in (kh, kw, c) order). Bit-equal to
// onnxsparse.format.compress_weight.
#pragma once
#include <string>

#include "common/op_shapes.h"
#include "common/ort_api.h"

namespace onnxsparse::cpu {

template <typename T>
struct CompressOpKernel {
  static constexpr size_t kFirstOptionalInput = 1;  // inputs from here on are optional
  static constexpr const char* kOpName = "CompressOp";

  CompressOpKernel(const OrtApi* api, const OrtKernelInfo* info) noexcept;

  Ort::Status Compute(const Ort::Custom::Tensor<T>& weight, Ort::Custom::Tensor<T>& values,
                      Ort::Custom::Tensor<uint8_t>& index);

 private:
  Ort::Status ComputeImpl(const Ort::Custom::Tensor<T>& weight, Ort::Custom::Tensor<T>& values,
                          Ort::Custom::Tensor<uint8_t>& index);

  WeightLayout layout_ = WeightLayout::kKN;
  std::string init_error_;  // set by the constructor, returned by every Compute
};

}  // namespace onnxsparse::cpu
