#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/activation_impl.cuh"
#include "cuda/device_common.cuh"

namespace onnxsparse::cuda {
namespace {

template <typename T>
__global__ void ActivationKernel(T* __restrict__ y, int64_t count, Activation act) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    y[i] = FromFloat<T>(Activate(act, ToFloat(y[i])));
  }
}

}  // namespace

template <typename T>
cudaError_t LaunchActivation(T* y, int64_t count, const Activation& act, cudaStream_t stream) {
  if (act.kind == ActivationKind::kNone || count <= 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t wanted = (count + kThreads - 1) / kThreads;
  const unsigned int blocks = static_cast<unsigned int>(wanted < 65535 ? wanted : 65535);
  ActivationKernel<T><<<blocks, kThreads, 0, stream>>>(y, count, act);
  return cudaGetLastError();
}

template cudaError_t LaunchActivation<float>(float*, int64_t, const Activation&, cudaStream_t);
template cudaError_t LaunchActivation<__half>(__half*, int64_t, const Activation&, cudaStream_t);
template cudaError_t LaunchActivation<__nv_bfloat16>(__nv_bfloat16*, int64_t, const Activation&, cudaStream_t);

}  // namespace onnxsparse::cuda
