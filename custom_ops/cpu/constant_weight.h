// The packed weight of a kernel whose compressed pair (inputs 1 and 2: values, index) is constant:
// read once with KernelInfoGetConstantInput_tensor when ONNX Runtime creates the kernel. Null when
// either input is fed at run time (an unfolded CompressOp), malformed, or holds an invalid index:
// the kernel then computes from SPEC's form on every call (and reports what is wrong).
#pragma once
#include <memory>
#include <type_traits>
#include <vector>

#include "common/ort_api.h"
#include "common/op_shapes.h"
#include "cpu/packed_weight.h"

namespace onnxsparse::cpu {

namespace detail {
inline const OrtValue* ConstantInput(const OrtKernelInfo* info, size_t input) {
  const OrtApi& api = Ort::GetApi();
  int is_constant = 0;
  const OrtValue* value = nullptr;
  if (OrtStatus* status = api.KernelInfoGetConstantInput_tensor(info, input, &is_constant, &value)) {
    api.ReleaseStatus(status);
    return nullptr;
  }
  return is_constant ? value : nullptr;
}
}  // namespace detail

template <typename T>
std::unique_ptr<PackedWeight> PackConstantWeight(const OrtKernelInfo* info) {
  const OrtValue* values_value = detail::ConstantInput(info, 1);
  const OrtValue* index_value = detail::ConstantInput(info, 2);
  if (values_value == nullptr || index_value == nullptr) return nullptr;
  Ort::ConstValue values(values_value), index(index_value);
  const auto values_info = values.GetTensorTypeAndShapeInfo();
  const auto index_info = index.GetTensorTypeAndShapeInfo();
  ONNXTensorElementDataType expected = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  int kind = 0;
  if constexpr (std::is_same_v<T, Ort::Float16_t>) {
    expected = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    kind = 1;
  } else if constexpr (std::is_same_v<T, Ort::BFloat16_t>) {
    expected = ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
    kind = 2;
  }
  if (values_info.GetElementType() != expected || index_info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8) {
    return nullptr;
  }
  CompressedWeightShape shape;
  if (!CheckCompressedWeight("", values_info.GetShape(), index_info.GetShape(), shape).IsOK()) return nullptr;
  if (shape.rows <= 0 || shape.k <= 0) return nullptr;
  return PackWeight(values.GetTensorRawData(), kind, index.GetTensorData<uint8_t>(), shape.rows, shape.k);
}

}  // namespace onnxsparse::cpu
