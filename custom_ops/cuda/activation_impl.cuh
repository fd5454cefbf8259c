// The fused activation (common/activation.h) on CUDA: an elementwise pass over the op's output on
// the op's stream, right after the product (host code includes this header only).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/activation.h"

namespace onnxsparse::cuda {

// y[i] = act(y[i]) for i < count, in fp32 (T: float, __half, __nv_bfloat16). Nothing for kNone.
template <typename T>
cudaError_t LaunchActivation(T* y, int64_t count, const Activation& act, cudaStream_t stream);

}  // namespace onnxsparse::cuda
