#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/compress_op_impl.cuh"
#include "cuda/device_common.cuh"

namespace onnxsparse::cuda {
namespace {

template <typename T>
__device__ __forceinline__ T Element(const T* w, const CompressArgs& a, int64_t row, int64_t kk) {
  switch (a.layout) {
    case WeightLayout::kKN:
      return w[kk * a.rows + row];
    case WeightLayout::kNK:
      return w[row * a.k + kk];
    default: {  // [OC, C, KH, KW], kk = (kh*KW + kw)*C + c
      const int64_t c = kk % a.channels;
      const int64_t khw = kk / a.channels;
      return w[((row * a.channels + c) * a.kernel_h + khw / a.kernel_w) * a.kernel_w + khw % a.kernel_w];
    }
  }
}

// One thread per index byte (two groups), as format.compress: index0 = first non-zero among
// elements 0..2; index1 = last non-zero among 1..3 other than index0's, counted from 1.
template <typename T>
__global__ void CompressKernel(const T* __restrict__ w, CompressArgs a, T* __restrict__ values,
                               uint8_t* __restrict__ index, unsigned int* bad_groups) {
  const int64_t stride = (a.k + 7) / 8;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= a.rows * stride) return;
  const int64_t row = i / stride;
  const int64_t byte_in_row = i % stride;
  uint32_t byte = 0;
  unsigned int bad = 0;
  for (int half = 0; half < 2; ++half) {
    const int64_t g = 2 * byte_in_row + half;
    if (g >= a.k / 4) break;
    T e[4];
    bool nz[4];
    int count = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      e[j] = Element(w, a, row, 4 * g + j);
      nz[j] = ToFloat(e[j]) != 0.f;  // -0.0 counts as zero
      count += nz[j];
    }
    bad += count > 2;
    int first = 0;
    bool has_first = false;
#pragma unroll
    for (int j = 2; j >= 0; --j) {
      if (nz[j]) first = j, has_first = true;
    }
    int second = 0;
    bool has_second = false;
#pragma unroll
    for (int j = 1; j <= 3; ++j) {
      if (nz[j] && !(has_first && j == first)) second = j - 1, has_second = true;
    }
    const T zero = FromFloat<T>(0.f);
    values[row * (a.k / 2) + 2 * g] = has_first ? e[first] : zero;
    values[row * (a.k / 2) + 2 * g + 1] = has_second ? e[second + 1] : zero;
    byte |= static_cast<uint32_t>(first | (second << 2)) << (4 * half);
  }
  index[i] = static_cast<uint8_t>(byte);
  if (bad) atomicAdd(bad_groups, bad);
}

}  // namespace

template <typename T>
cudaError_t LaunchCompress(const T* weight, const CompressArgs& args, T* values, uint8_t* index,
                           unsigned int* bad_groups, cudaStream_t stream) {
  const int64_t total = args.rows * ((args.k + 7) / 8);
  if (total == 0) return cudaSuccess;
  CompressKernel<T><<<CeilDiv(total, 256), 256, 0, stream>>>(weight, args, values, index, bad_groups);
  return cudaGetLastError();
}

template cudaError_t LaunchCompress<float>(const float*, const CompressArgs&, float*, uint8_t*, unsigned int*,
                                           cudaStream_t);
template cudaError_t LaunchCompress<__half>(const __half*, const CompressArgs&, __half*, uint8_t*, unsigned int*,
                                            cudaStream_t);
template cudaError_t LaunchCompress<__nv_bfloat16>(const __nv_bfloat16*, const CompressArgs&, __nv_bfloat16*,
                                                   uint8_t*, unsigned int*, cudaStream_t);

}  // namespace onnxsparse::cuda
