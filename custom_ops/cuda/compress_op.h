// CompressOp on CUDA: a dense 2:4 weight in its ONNX layout -> SPEC's (values, index).
// Attribute layout: "kn", "nk" or "oihw" (see DEVELOPERS.md).
#pragma once
#include <string>

#include "common/op_shapes.h"
#include "common/ort_api.h"
#include "cuda/cuda_utils.h"

namespace onnxsparse::cuda {

template <typename OrtT>
struct CompressOpCuda {
  CompressOpCuda(const OrtApi* api, const OrtKernelInfo* info) noexcept;
  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<OrtT>& weight,
                      Ort::Custom::Tensor<OrtT>& values, Ort::Custom::Tensor<uint8_t>& index);

 private:
  onnxsparse::WeightLayout layout_ = onnxsparse::WeightLayout::kKN;  // mapped to the launcher's enum in Compute
  std::string init_error_;  // set by the constructor, returned by every Compute
  DeviceBuffer bad_groups_;  // device counter of non-2:4 groups, on the kernel's device
  int device_ = -1;          // the execution provider's device (KernelInfo)
};

}  // namespace onnxsparse::cuda
