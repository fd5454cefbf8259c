// The small kernels around the GEMMs: SPEC's form decoded to dense (cuSPARSELt's input), the bias
// added after a GEMM that could not fuse it, the transposes around Conv's GEMM, and the check that
// an index holds no invalid 2-bit value.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/device_common.cuh"
#include "cuda/sparse_gemm_impl.cuh"

namespace onnxsparse::cuda {

namespace {

template <typename T>
__global__ void DecompressKernel(const T* __restrict__ values, const uint8_t* __restrict__ index, int64_t rows,
                                 int64_t k, T* __restrict__ dense) {
  const int64_t ngroups = k / 4;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * ngroups) return;
  const int64_t row = i / ngroups;
  const int64_t g = i % ngroups;
  const uint32_t byte = index[row * ((k + 7) / 8) + g / 2];
  const uint32_t nibble = (g & 1) ? (byte >> 4) : (byte & 0xFu);
  float out[4] = {0.f, 0.f, 0.f, 0.f};
  out[nibble & 3u] += ToFloat(values[row * (k / 2) + 2 * g]);
  out[min(3u, 1u + ((nibble >> 2) & 3u))] += ToFloat(values[row * (k / 2) + 2 * g + 1]);
#pragma unroll
  for (int e = 0; e < 4; ++e) dense[row * k + 4 * g + e] = FromFloat<T>(out[e]);
}

template <typename T>
__global__ void AddBiasKernel(T* y, int64_t m, int64_t n, int64_t ldy, const T* __restrict__ bias) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m * n) return;
  const int64_t row = i / n;
  const int64_t col = i % n;
  T& v = y[row * ldy + col];
  v = FromFloat<T>(ToFloat(v) + ToFloat(bias[col]));
}

template <typename T>
__global__ void TransposeKernel(const T* __restrict__ in, T* __restrict__ out, int64_t rows, int64_t cols,
                                const T* __restrict__ bias) {
  __shared__ T tile[32][33];
  const int64_t b = blockIdx.z;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * 32;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * 32;
  const T* src = in + b * rows * cols;
  T* dst = out + b * rows * cols;
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int64_t r = r0 + i;
    const int64_t c = c0 + threadIdx.x;
    if (r < rows && c < cols) tile[i][threadIdx.x] = src[r * cols + c];
  }
  __syncthreads();
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int64_t c = c0 + i;
    const int64_t r = r0 + threadIdx.x;
    if (r < rows && c < cols) {
      T v = tile[threadIdx.x][i];
      if (bias != nullptr) v = FromFloat<T>(ToFloat(v) + ToFloat(bias[c]));
      dst[c * rows + r] = v;
    }
  }
}

__global__ void CountInvalidNibblesKernel(const uint8_t* __restrict__ index, int64_t rows, int64_t k,
                                          unsigned int* invalid_count) {
  const int64_t stride = (k + 7) / 8;
  const int64_t ngroups = k / 4;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * stride) return;
  const int64_t byte_in_row = i % stride;
  const uint32_t byte = index[i];
  unsigned int bad = 0;
  for (int half = 0; half < 2; ++half) {
    const int64_t g = 2 * byte_in_row + half;
    const uint32_t nib = (byte >> (4 * half)) & 0xFu;
    if (g < ngroups) bad += ((nib & 3u) == 3u || (nib & 0xCu) == 0xCu) ? 1u : 0u;
  }
  if (bad) atomicAdd(invalid_count, bad);
}

}  // namespace

template <typename T>
cudaError_t LaunchDecompress(const T* values, const uint8_t* index, int64_t rows, int64_t k, T* dense,
                             cudaStream_t stream) {
  const int64_t total = rows * (k / 4);
  if (total == 0) return cudaSuccess;
  DecompressKernel<T><<<CeilDiv(total, 256), 256, 0, stream>>>(values, index, rows, k, dense);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchAddBias(T* y, int64_t m, int64_t n, int64_t ldy, const T* bias, cudaStream_t stream) {
  if (m * n == 0) return cudaSuccess;
  AddBiasKernel<T><<<CeilDiv(m * n, 256), 256, 0, stream>>>(y, m, n, ldy, bias);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchTranspose(const T* in, T* out, int64_t batch, int64_t rows, int64_t cols, const T* bias,
                            cudaStream_t stream) {
  if (batch * rows * cols == 0) return cudaSuccess;
  const dim3 grid(CeilDiv(cols, 32), CeilDiv(rows, 32), static_cast<unsigned int>(batch));
  TransposeKernel<T><<<grid, dim3(32, 8), 0, stream>>>(in, out, rows, cols, bias);
  return cudaGetLastError();
}

cudaError_t LaunchCountInvalidNibbles(const uint8_t* index, int64_t rows, int64_t k, unsigned int* invalid_count,
                                      cudaStream_t stream) {
  const int64_t total = rows * ((k + 7) / 8);
  if (total == 0) return cudaSuccess;
  CountInvalidNibblesKernel<<<CeilDiv(total, 256), 256, 0, stream>>>(index, rows, k, invalid_count);
  return cudaGetLastError();
}

#define ONNXSPARSE_INSTANTIATE(T)                                                                              \
  template cudaError_t LaunchDecompress<T>(const T*, const uint8_t*, int64_t, int64_t, T*, cudaStream_t);      \
  template cudaError_t LaunchAddBias<T>(T*, int64_t, int64_t, int64_t, const T*, cudaStream_t);                \
  template cudaError_t LaunchTranspose<T>(const T*, T*, int64_t, int64_t, int64_t, const T*, cudaStream_t);

ONNXSPARSE_INSTANTIATE(float)
ONNXSPARSE_INSTANTIATE(__half)
ONNXSPARSE_INSTANTIATE(__nv_bfloat16)
#undef ONNXSPARSE_INSTANTIATE

}  // namespace onnxsparse::cuda
