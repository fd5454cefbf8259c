#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/conv2d_compress_impl.cuh"
#include "cuda/device_common.cuh"

namespace onnxsparse::cuda {
namespace {

__device__ __forceinline__ bool IsNonFinite(float v) { return !isfinite(v); }

// One thread per VEC consecutive channels of one (output pixel, kh, kw): reads and writes are
// contiguous along the channels (the input is NHWC). Index arithmetic in I (int where the counts
// fit, which is cheaper), offsets in 64 bits. With `flag`, sets *flag when it writes a NaN/Inf.
template <typename T, int VEC, typename I>
__global__ void Im2colNhwcKernel(const T* __restrict__ nhwc, Im2colArgs a, I total, T* __restrict__ col,
                                 unsigned int* flag) {
  struct alignas(sizeof(T) * VEC) Vec {
    T v[VEC];
  };
  const I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x;
  bool bad = false;
  if (i < total) {
    const I cvec = static_cast<I>(a.group_channels) / VEC;
    const I kernel_w = static_cast<I>(a.kernel_w), kernel_h = static_cast<I>(a.kernel_h);
    const I out_w = static_cast<I>(a.out_w), out_h = static_cast<I>(a.out_h);
    const I cv = i % cvec;
    I rest = i / cvec;
    const I kw = rest % kernel_w;
    rest /= kernel_w;
    const I kh = rest % kernel_h;
    const I row = rest / kernel_h;  // (b*OH + oh)*OW + ow
    const I ow = row % out_w;
    const I oh = (row / out_w) % out_h;
    const I b = row / (out_w * out_h);
    const I ih = oh * static_cast<I>(a.stride_h) - static_cast<I>(a.pad_top) + kh * static_cast<I>(a.dilation_h);
    const I iw = ow * static_cast<I>(a.stride_w) - static_cast<I>(a.pad_left) + kw * static_cast<I>(a.dilation_w);
    Vec out;
    if (ih >= 0 && ih < a.height && iw >= 0 && iw < a.width) {
      out = *reinterpret_cast<const Vec*>(nhwc + ((static_cast<int64_t>(b) * a.height + ih) * a.width + iw) * a.channels +
                                          a.channel_offset + cv * VEC);
      if (flag != nullptr) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) bad |= IsNonFinite(ToFloat(out.v[e]));
      }
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) out.v[e] = FromFloat<T>(0.f);
    }
    *reinterpret_cast<Vec*>(col + static_cast<int64_t>(row) * (kernel_h * kernel_w * a.group_channels) +
                            (kh * kernel_w + kw) * a.group_channels + cv * VEC) = out;
  }
  if (flag != nullptr && __syncthreads_or(bad) && threadIdx.x == 0) *flag = 1u;
}

template <typename T, int VEC>
void Im2colNhwc(const T* nhwc, const Im2colArgs& a, int64_t total, T* col, unsigned int* flag, cudaStream_t stream) {
  const int64_t blocks = CeilDiv(total, 256);
  if (total <= 0x7fffffff && a.batch * a.out_h * a.out_w <= 0x7fffffff) {
    Im2colNhwcKernel<T, VEC, int><<<blocks, 256, 0, stream>>>(nhwc, a, static_cast<int>(total), col, flag);
  } else {
    Im2colNhwcKernel<T, VEC, int64_t><<<blocks, 256, 0, stream>>>(nhwc, a, total, col, flag);
  }
}

}  // namespace

template <typename T>
cudaError_t LaunchIm2colNhwc(const T* nhwc, const Im2colArgs& a, T* col, unsigned int* flag, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const bool vec = a.group_channels % kVec == 0 && a.channels % kVec == 0 && a.channel_offset % kVec == 0;
  const int64_t rows = a.batch * a.out_h * a.out_w * a.kernel_h * a.kernel_w;
  if (rows * a.group_channels == 0) return cudaSuccess;
  if (vec) Im2colNhwc<T, kVec>(nhwc, a, rows * (a.group_channels / kVec), col, flag, stream);
  else Im2colNhwc<T, 1>(nhwc, a, rows * a.group_channels, col, flag, stream);
  return cudaGetLastError();
}


namespace {

// A block per row (b, krow) of the per-image im2col matrices [batch, K, cols] (its image, channel
// and kernel tap worked out once), its threads along the row's columns: writes contiguous, reads
// contiguous along ow, 32-bit index arithmetic per element.
template <typename T>
__global__ void Im2colNchwKernel(const T* __restrict__ x, Im2colArgs a, int cols, int krows, T* __restrict__ col,
                                 unsigned int* flag) {
  const int64_t row = blockIdx.x;  // b * krows + krow
  const int krow = static_cast<int>(row % krows);
  const int64_t b = row / krows;
  const int c = krow % static_cast<int>(a.channels);
  const int t = krow / static_cast<int>(a.channels);
  const int kw = t % static_cast<int>(a.kernel_w), kh = t / static_cast<int>(a.kernel_w);
  const int out_w = static_cast<int>(a.out_w), hw = static_cast<int>(a.out_h * a.out_w);
  const int height = static_cast<int>(a.height), width = static_cast<int>(a.width);
  const int stride_h = static_cast<int>(a.stride_h), stride_w = static_cast<int>(a.stride_w);
  const int ih0 = kh * static_cast<int>(a.dilation_h) - static_cast<int>(a.pad_top);
  const int iw0 = kw * static_cast<int>(a.dilation_w) - static_cast<int>(a.pad_left);
  const T* plane = x + (b * a.channels + c) * a.height * a.width;
  T* out = col + row * cols;
  bool bad = false;
  for (int p = threadIdx.x; p < cols; p += blockDim.x) {
    T v = FromFloat<T>(0.f);
    if (p < hw) {
      const int oh = p / out_w, ow = p - oh * out_w;
      const int ih = oh * stride_h + ih0, iw = ow * stride_w + iw0;
      if (ih >= 0 && ih < height && iw >= 0 && iw < width) {
        v = plane[ih * width + iw];
        bad |= flag != nullptr && IsNonFinite(ToFloat(v));
      }
    }
    out[p] = v;
  }
  if (flag != nullptr && __syncthreads_or(bad) && threadIdx.x == 0) *flag = 1u;
}

// 16-byte loads where the count and the pointer allow (VEC elements each).
template <typename T, int VEC>
__global__ void ScanFlatKernel(const T* __restrict__ x, int64_t count, unsigned int* flag) {
  struct alignas(sizeof(T) * VEC) Vec {
    T v[VEC];
  };
  bool bad = false;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count / VEC; i += stride) {
    const Vec in = reinterpret_cast<const Vec*>(x)[i];
#pragma unroll
    for (int e = 0; e < VEC; ++e) bad |= IsNonFinite(ToFloat(in.v[e]));
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) *flag = 1u;
}

// A block per output row (b, o): its bias read once, threads along the row.
template <typename T>
__global__ void EpilogueNchwKernel(const T* src, int ld, T* y, int oc, int hw, const T* __restrict__ bias,
                                   Activation act) {
  const int64_t row = blockIdx.x;  // b * oc + o
  const float add = bias != nullptr ? ToFloat(bias[row % oc]) : 0.f;
  const T* in = src + row * ld;
  T* out = y + row * hw;
  for (int p = threadIdx.x; p < hw; p += blockDim.x) out[p] = FromFloat<T>(Activate(act, ToFloat(in[p]) + add));
}

int ThreadsFor(int64_t cols) { return cols >= 256 ? 256 : static_cast<int>((cols + 31) / 32 * 32); }

// The weight W[o, kk] from SPEC's form (0 where pruned).
template <typename T>
__device__ __forceinline__ float DecodedWeight(const T* __restrict__ values, const uint8_t* __restrict__ index,
                                               int64_t k, int64_t o, int64_t kk) {
  const int64_t g = kk >> 2;
  const uint32_t byte = index[o * ((k + 7) / 8) + (g >> 1)];
  const uint32_t nibble = (g & 1) ? (byte >> 4) : (byte & 0xFu);
  const uint32_t e = static_cast<uint32_t>(kk & 3);
  float w = 0.f;
  if (e == (nibble & 3u)) w += ToFloat(values[o * (k / 2) + 2 * g]);
  if (e == min(3u, 1u + ((nibble >> 2) & 3u))) w += ToFloat(values[o * (k / 2) + 2 * g + 1]);
  return w;
}

// Blocks over output columns (b, p): a column with a NaN/Inf in its im2col column is recomputed
// densely, a thread per output channel.
template <typename T>
__global__ void NonFiniteFixNchwKernel(const T* __restrict__ col, int64_t k, int64_t cols, const T* __restrict__ values,
                                       const uint8_t* __restrict__ index, const T* __restrict__ bias, Activation act,
                                       int64_t batch, int64_t oc, int64_t hw, T* y, const unsigned int* flag) {
  if (*flag == 0u) return;
  for (int64_t column = blockIdx.x; column < batch * hw; column += gridDim.x) {
    const int64_t b = column / hw, p = column % hw;
    const T* xc = col + b * k * cols + p;
    bool bad = false;
    for (int64_t kk = threadIdx.x; kk < k; kk += blockDim.x) bad |= IsNonFinite(ToFloat(xc[kk * cols]));
    if (!__syncthreads_or(bad)) continue;
    for (int64_t o = threadIdx.x; o < oc; o += blockDim.x) {
      float acc = 0.f;
      for (int64_t kk = 0; kk < k; ++kk) acc += DecodedWeight(values, index, k, o, kk) * ToFloat(xc[kk * cols]);
      if (bias != nullptr) acc += ToFloat(bias[o]);
      y[(b * oc + o) * hw + p] = FromFloat<T>(Activate(act, acc));
    }
  }
}

unsigned int GridFor(int64_t total, int threads, int64_t cap = 65535 * 8) {
  const int64_t blocks = (total + threads - 1) / threads;
  return static_cast<unsigned int>(blocks < cap ? blocks : cap);
}

}  // namespace

template <typename T>
cudaError_t LaunchIm2colNchw(const T* x, const Im2colArgs& a, int64_t cols, T* col, unsigned int* flag,
                             cudaStream_t stream) {
  const int64_t krows = a.kernel_h * a.kernel_w * a.channels;
  const int64_t rows = a.batch * krows;
  if (rows * cols == 0) return cudaSuccess;
  if (rows > 0x7fffffff || cols > 0x7fffffff || a.height * a.width > 0x7fffffff) return cudaErrorInvalidValue;
  Im2colNchwKernel<T><<<static_cast<unsigned int>(rows), ThreadsFor(cols), 0, stream>>>(
      x, a, static_cast<int>(cols), static_cast<int>(krows), col, flag);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchScanNonFiniteFlat(const T* x, int64_t count, unsigned int* flag, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  constexpr int kVec = 16 / sizeof(T);
  if (count % kVec == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0) {
    ScanFlatKernel<T, kVec><<<GridFor(count / kVec, 256, 2048), 256, 0, stream>>>(x, count, flag);
  } else {
    ScanFlatKernel<T, 1><<<GridFor(count, 256, 2048), 256, 0, stream>>>(x, count, flag);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchConvEpilogueNchw(const T* src, int64_t ld, T* y, int64_t batch, int64_t oc, int64_t hw, const T* bias,
                                   const Activation& act, cudaStream_t stream) {
  const int64_t rows = batch * oc;
  if (rows * hw == 0) return cudaSuccess;
  if (rows > 0x7fffffff || ld > 0x7fffffff) return cudaErrorInvalidValue;
  EpilogueNchwKernel<T><<<static_cast<unsigned int>(rows), ThreadsFor(hw), 0, stream>>>(
      src, static_cast<int>(ld), y, static_cast<int>(oc), static_cast<int>(hw), bias, act);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchConvNonFiniteFixNchw(const T* col, int64_t k, int64_t cols, const T* values, const uint8_t* index,
                                       const T* bias, const Activation& act, int64_t batch, int64_t oc, int64_t hw,
                                       T* y, const unsigned int* flag, cudaStream_t stream) {
  if (batch * hw * oc == 0) return cudaSuccess;
  const int64_t blocks = batch * hw < 2048 ? batch * hw : 2048;  // few: they exit at once when the flag is clear
  NonFiniteFixNchwKernel<T><<<static_cast<unsigned int>(blocks), 128, 0, stream>>>(col, k, cols, values, index, bias,
                                                                                 act, batch, oc, hw, y, flag);
  return cudaGetLastError();
}

#define ONNXSPARSE_CONV_NCHW_INSTANTIATE(T)                                                                         \
  template cudaError_t LaunchIm2colNchw<T>(const T*, const Im2colArgs&, int64_t, T*, unsigned int*, cudaStream_t); \
  template cudaError_t LaunchScanNonFiniteFlat<T>(const T*, int64_t, unsigned int*, cudaStream_t);                 \
  template cudaError_t LaunchConvEpilogueNchw<T>(const T*, int64_t, T*, int64_t, int64_t, int64_t, const T*,       \
                                                 const Activation&, cudaStream_t);                                  \
  template cudaError_t LaunchConvNonFiniteFixNchw<T>(const T*, int64_t, int64_t, const T*, const uint8_t*, const T*, \
                                                     const Activation&, int64_t, int64_t, int64_t, T*,              \
                                                     const unsigned int*, cudaStream_t);
ONNXSPARSE_CONV_NCHW_INSTANTIATE(float)
ONNXSPARSE_CONV_NCHW_INSTANTIATE(__half)
ONNXSPARSE_CONV_NCHW_INSTANTIATE(__nv_bfloat16)
#undef ONNXSPARSE_CONV_NCHW_INSTANTIATE

template cudaError_t LaunchIm2colNhwc<float>(const float*, const Im2colArgs&, float*, unsigned int*, cudaStream_t);
template cudaError_t LaunchIm2colNhwc<__half>(const __half*, const Im2colArgs&, __half*, unsigned int*, cudaStream_t);
template cudaError_t LaunchIm2colNhwc<__nv_bfloat16>(const __nv_bfloat16*, const Im2colArgs&, __nv_bfloat16*,
                                                     unsigned int*, cudaStream_t);

}  // namespace onnxsparse::cuda
