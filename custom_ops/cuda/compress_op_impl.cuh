// Launcher of CompressOp's kernel (host code includes this header only).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace onnxsparse::cuda {

enum class WeightLayout : int { kKN = 0, kNK = 1, kOIHW = 2 };

struct CompressArgs {
  WeightLayout layout = WeightLayout::kKN;
  int64_t rows = 0;  // N or OC
  int64_t k = 0;     // reduction length
  int64_t channels = 0, kernel_h = 1, kernel_w = 1;  // oihw: C/group, KH, KW
};

// SPEC's compress of a dense 2:4 weight in its ONNX layout. *bad_groups (device) is increased by the
// number of groups with more than 2 non-zeros (their first two non-zeros are kept).
template <typename T>
cudaError_t LaunchCompress(const T* weight, const CompressArgs& args, T* values, uint8_t* index,
                           unsigned int* bad_groups, cudaStream_t stream);

}  // namespace onnxsparse::cuda
