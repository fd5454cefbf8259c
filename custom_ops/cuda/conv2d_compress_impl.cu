#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/conv2d_compress_impl.cuh"
#include "cuda/device_common.cuh"

namespace onnxsparse::cuda {
namespace {

// One thread per VEC consecutive channels of one (output pixel, kh, kw): reads and writes are
// contiguous along the channels (the input is NHWC).
template <typename T, int VEC>
__global__ void Im2colNhwcKernel(const T* __restrict__ nhwc, Im2colArgs a, T* __restrict__ col) {
  struct alignas(sizeof(T) * VEC) Vec {
    T v[VEC];
  };
  const int64_t cvec = a.group_channels / VEC;
  const int64_t kcols = a.kernel_h * a.kernel_w * a.group_channels;
  const int64_t total = a.batch * a.out_h * a.out_w * a.kernel_h * a.kernel_w * cvec;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int64_t cv = i % cvec;
  int64_t rest = i / cvec;
  const int64_t kw = rest % a.kernel_w;
  rest /= a.kernel_w;
  const int64_t kh = rest % a.kernel_h;
  const int64_t row = rest / a.kernel_h;  // (b*OH + oh)*OW + ow
  const int64_t ow = row % a.out_w;
  const int64_t oh = (row / a.out_w) % a.out_h;
  const int64_t b = row / (a.out_w * a.out_h);
  const int64_t ih = oh * a.stride_h - a.pad_top + kh * a.dilation_h;
  const int64_t iw = ow * a.stride_w - a.pad_left + kw * a.dilation_w;
  Vec out;
  if (ih >= 0 && ih < a.height && iw >= 0 && iw < a.width) {
    out = *reinterpret_cast<const Vec*>(nhwc + ((b * a.height + ih) * a.width + iw) * a.channels + a.channel_offset +
                                        cv * VEC);
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) out.v[e] = FromFloat<T>(0.f);
  }
  *reinterpret_cast<Vec*>(col + row * kcols + (kh * a.kernel_w + kw) * a.group_channels + cv * VEC) = out;
}

}  // namespace

template <typename T>
cudaError_t LaunchIm2colNhwc(const T* nhwc, const Im2colArgs& a, T* col, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const bool vec = a.group_channels % kVec == 0 && a.channels % kVec == 0 && a.channel_offset % kVec == 0;
  const int64_t rows = a.batch * a.out_h * a.out_w * a.kernel_h * a.kernel_w;
  if (rows * a.group_channels == 0) return cudaSuccess;
  if (vec) {
    Im2colNhwcKernel<T, kVec><<<CeilDiv(rows * (a.group_channels / kVec), 256), 256, 0, stream>>>(nhwc, a, col);
  } else {
    Im2colNhwcKernel<T, 1><<<CeilDiv(rows * a.group_channels, 256), 256, 0, stream>>>(nhwc, a, col);
  }
  return cudaGetLastError();
}

template cudaError_t LaunchIm2colNhwc<float>(const float*, const Im2colArgs&, float*, cudaStream_t);
template cudaError_t LaunchIm2colNhwc<__half>(const __half*, const Im2colArgs&, __half*, cudaStream_t);
template cudaError_t LaunchIm2colNhwc<__nv_bfloat16>(const __nv_bfloat16*, const Im2colArgs&, __nv_bfloat16*,
                                                     cudaStream_t);

}  // namespace onnxsparse::cuda
