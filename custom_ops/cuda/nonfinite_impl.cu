// The NaN/Inf scan and fix-up of nonfinite_impl.cuh.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "cuda/nonfinite_impl.cuh"

namespace onnxsparse::cuda {

namespace {

// The bits of T, and the exponent mask: a value is NaN or +-Inf when all of its bits are set.
template <typename T>
struct Bits {
  using type = uint16_t;
};
template <>
struct Bits<float> {
  using type = uint32_t;
};
template <typename T>
__device__ __forceinline__ bool NonFinite(typename Bits<T>::type bits);
template <>
__device__ __forceinline__ bool NonFinite<float>(uint32_t bits) { return (bits & 0x7F800000u) == 0x7F800000u; }
template <>
__device__ __forceinline__ bool NonFinite<__half>(uint16_t bits) { return (bits & 0x7C00u) == 0x7C00u; }
template <>
__device__ __forceinline__ bool NonFinite<__nv_bfloat16>(uint16_t bits) { return (bits & 0x7F80u) == 0x7F80u; }

template <typename T>
__device__ __forceinline__ typename Bits<T>::type QuietNaN();
template <>
__device__ __forceinline__ uint32_t QuietNaN<float>() { return 0x7FC00000u; }
template <>
__device__ __forceinline__ uint16_t QuietNaN<__half>() { return 0x7E00u; }
template <>
__device__ __forceinline__ uint16_t QuietNaN<__nv_bfloat16>() { return 0x7FC0u; }

constexpr int kScanThreads = 256;
constexpr int kFixThreads = 128;
constexpr int kMaxBad = 512;  // positions of one row kept in shared memory; more: the row is rescanned

template <typename T>
__global__ void ScanKernel(const typename Bits<T>::type* __restrict__ x, int64_t count, unsigned int* flag) {
  bool found = false;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    found |= NonFinite<T>(x[i]);
  }
  if (__syncthreads_or(found) && threadIdx.x == 0) *flag = 1u;
}

// Whether row j of the index keeps position kk (its group's nibble selects it).
__device__ __forceinline__ bool Kept(const uint8_t* __restrict__ index, int64_t index_row, int64_t j, int64_t kk) {
  const uint32_t byte = index[j * index_row + (kk >> 3)];
  const uint32_t nibble = ((kk >> 2) & 1) ? (byte >> 4) : (byte & 0xFu);
  const int e = static_cast<int>(kk & 3);
  return e == static_cast<int>(nibble & 3u) || e == 1 + static_cast<int>((nibble >> 2) & 3u);
}

// Blocks (rows i = blockIdx.x, + gridDim.x, ..., tile of output columns blockIdx.y): row i of x is
// scanned for its non-finite positions, then each thread checks one output column.
template <typename T>
__global__ void FixKernel(const typename Bits<T>::type* __restrict__ x, int64_t m, int64_t k,
                          const uint8_t* __restrict__ index, int64_t n, typename Bits<T>::type* y, int64_t ldy,
                          const unsigned int* flag) {
  if (*flag == 0u) return;  // the usual case: nothing non-finite anywhere
  __shared__ int64_t bad[kMaxBad];
  __shared__ int count;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int64_t index_row = (k + 7) / 8;
  for (int64_t i = blockIdx.x; i < m; i += gridDim.x) {
    const typename Bits<T>::type* row = x + i * k;
    __syncthreads();  // the previous row's readers are done with bad and count
    if (threadIdx.x == 0) count = 0;
    __syncthreads();
    for (int64_t kk = threadIdx.x; kk < k; kk += blockDim.x) {
      if (NonFinite<T>(row[kk])) {
        const int slot = atomicAdd(&count, 1);
        if (slot < kMaxBad) bad[slot] = kk;
      }
    }
    __syncthreads();
    const int found = count;
    if (found == 0 || j >= n) continue;
    bool nan = false;
    if (found <= kMaxBad) {
      for (int b = 0; b < found && !nan; ++b) nan = !Kept(index, index_row, j, bad[b]);
    } else {
      for (int64_t kk = 0; kk < k && !nan; ++kk) nan = NonFinite<T>(row[kk]) && !Kept(index, index_row, j, kk);
    }
    if (nan) y[i * ldy + j] = QuietNaN<T>();
  }
}

}  // namespace

template <typename T>
cudaError_t LaunchPropagateNonFinite(const T* x, int64_t m, int64_t k, const uint8_t* index, int64_t n, T* y,
                                     int64_t ldy, unsigned int* flag, cudaStream_t stream) {
  if (m <= 0 || n <= 0 || k <= 0) return cudaSuccess;
  using B = typename Bits<T>::type;
  cudaError_t err = cudaMemsetAsync(flag, 0, sizeof(unsigned int), stream);
  if (err != cudaSuccess) return err;
  const int64_t count = m * k;
  const int64_t blocks = std::min<int64_t>((count + kScanThreads - 1) / kScanThreads, 1024);
  ScanKernel<T><<<static_cast<unsigned>(blocks), kScanThreads, 0, stream>>>(reinterpret_cast<const B*>(x), count, flag);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  // Blocks over rows (each takes every gridDim.x-th row) and tiles of output columns; few enough
  // that the launch costs little when they all exit at once (the flag clear).
  const int64_t row_blocks = std::min<int64_t>(m, std::max<int64_t>(1, 4096 / ((n + kFixThreads - 1) / kFixThreads)));
  const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>((n + kFixThreads - 1) / kFixThreads));
  FixKernel<T><<<grid, kFixThreads, 0, stream>>>(reinterpret_cast<const B*>(x), m, k, index, n,
                                                 reinterpret_cast<B*>(y), ldy, flag);
  return cudaGetLastError();
}

template cudaError_t LaunchPropagateNonFinite<float>(const float*, int64_t, int64_t, const uint8_t*, int64_t, float*,
                                                     int64_t, unsigned int*, cudaStream_t);
template cudaError_t LaunchPropagateNonFinite<__half>(const __half*, int64_t, int64_t, const uint8_t*, int64_t, __half*,
                                                      int64_t, unsigned int*, cudaStream_t);
template cudaError_t LaunchPropagateNonFinite<__nv_bfloat16>(const __nv_bfloat16*, int64_t, int64_t, const uint8_t*,
                                                             int64_t, __nv_bfloat16*, int64_t, unsigned int*,
                                                             cudaStream_t);

}  // namespace onnxsparse::cuda
