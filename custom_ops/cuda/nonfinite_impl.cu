// The NaN/Inf scan and fix-up of nonfinite_impl.cuh.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "cuda/nonfinite_impl.cuh"
#include "cuda/dependent_launch.h"

namespace onnxsparse::cuda {

namespace {

// The bits of T and two of their patterns: +Inf, which is also the exponent mask (a value is NaN
// or +-Inf when all of its exponent bits are set), and the quiet NaN the fix-up writes.
template <typename T>
struct Bits;
template <>
struct Bits<float> {
  using type = uint32_t;
  static constexpr uint32_t kInfinity = 0x7F800000u, kQuietNaN = 0x7FC00000u;
};
template <>
struct Bits<__half> {
  using type = uint16_t;
  static constexpr uint16_t kInfinity = 0x7C00u, kQuietNaN = 0x7E00u;
};
template <>
struct Bits<__nv_bfloat16> {
  using type = uint16_t;
  static constexpr uint16_t kInfinity = 0x7F80u, kQuietNaN = 0x7FC0u;
};

// The sign bit of T's bits.
template <typename T>
__device__ __forceinline__ typename Bits<T>::type SignBit() {
  return static_cast<typename Bits<T>::type>(1u << (8 * sizeof(typename Bits<T>::type) - 1));
}

template <typename T>
__device__ __forceinline__ bool NonFinite(typename Bits<T>::type bits) {
  return (bits & Bits<T>::kInfinity) == Bits<T>::kInfinity;
}

// NaN (not an infinity): above the infinity's bits once the sign is cleared.
template <typename T>
__device__ __forceinline__ bool IsNaN(typename Bits<T>::type bits) {
  return static_cast<typename Bits<T>::type>(bits & ~SignBit<T>()) > Bits<T>::kInfinity;
}

// Whether one of the values packed in a 32-bit word is NaN or +-Inf (two 16-bit values or one float).
template <typename T>
__device__ __forceinline__ bool AnyNonFinite(uint32_t word) {
  if constexpr (sizeof(typename Bits<T>::type) == 4) {
    return NonFinite<T>(word);
  } else {
    return NonFinite<T>(static_cast<uint16_t>(word)) || NonFinite<T>(static_cast<uint16_t>(word >> 16));
  }
}

constexpr int kThreads = 256;
constexpr int kMaxBad = 512;  // positions of one row kept in shared memory; more: the row is rescanned
constexpr int kRowsPerBlock = 64;  // a block's rows: one bit each in a shared mask
constexpr int64_t kMinBlocks = 1024;

// Which of its group's two values row j of the weight keeps at position kk (0 or 1), -1 when it
// prunes kk (its group's nibble selects the kept positions).
__device__ __forceinline__ int KeptSlot(const uint8_t* __restrict__ index, int64_t index_row, int64_t j, int64_t kk) {
  const uint32_t byte = index[j * index_row + (kk >> 3)];
  const uint32_t nibble = ((kk >> 2) & 1) ? (byte >> 4) : (byte & 0xFu);
  const int e = static_cast<int>(kk & 3);
  if (e == static_cast<int>(nibble & 3u)) return 0;
  return e == 1 + static_cast<int>((nibble >> 2) & 3u) ? 1 : -1;
}

// Whether the dense product's term W[j, kk] * x[kk], x[kk] infinite, makes output j NaN: 0 * Inf
// (a pruned position, or a kept zero), or an infinity of the sign opposite to an earlier term's
// (*positive / *negative: the signs of the infinite terms seen so far).
template <typename T>
__device__ __forceinline__ bool InfiniteTermMakesNaN(const typename Bits<T>::type* __restrict__ values,
                                                     const uint8_t* __restrict__ index, int64_t k, int64_t index_row,
                                                     int64_t j, int64_t kk, typename Bits<T>::type x, bool* positive,
                                                     bool* negative) {
  using B = typename Bits<T>::type;
  const int slot = KeptSlot(index, index_row, j, kk);
  if (slot < 0) return true;
  const B w = values[j * (k / 2) + 2 * (kk >> 2) + slot];
  if ((w & static_cast<B>(~SignBit<T>())) == 0) return true;
  if (((w ^ x) & SignBit<T>()) != 0) *negative = true;
  else *positive = true;
  return *positive && *negative;
}

// One kernel, after the product: block b takes rows b, b + gridDim.x, ... (at most kRowsPerBlock).
// It first scans its rows of x, which the product only read, so that with PDL this part runs while
// the product still computes; then it waits for the product (griddepcontrol.wait: the grid before
// it complete, its writes visible) and, only for a row that holds a NaN/Inf, writes each output
// Y[i, j] of the row as the dense product makes it: NaN where the row holds a NaN (any weight times
// NaN is NaN), or where weight row j meets one of the row's infinite positions with a zero (pruned,
// or a kept zero: 0 * Inf) or meets infinities whose products differ in sign (Inf - Inf); else the
// infinity of its terms' sign (a finite bias does not change it), 0 for -Inf when `relu` (the
// product's epilogue applied a ReLU). The sparse product alone gets neither right: it skips the
// pruned terms, and cuSPARSELt's fused ReLU was seen to turn a -Inf into NaN on the H200.
// With nothing non-finite (the usual case) it costs one launch and one read of x.
// `flag` (may be null): set by the kernel that wrote x (an im2col pass) when it wrote a NaN/Inf;
// then 0 means there is nothing to scan and the kernel returns after the wait.
template <typename T>
__global__ void __launch_bounds__(kThreads) ScanFixKernel(const typename Bits<T>::type* __restrict__ x, int64_t m,
                                                          int64_t k, const typename Bits<T>::type* __restrict__ values,
                                                          const uint8_t* __restrict__ index, int64_t n,
                                                          typename Bits<T>::type* y, int64_t ldy, bool relu,
                                                          const unsigned int* flag) {
  using B = typename Bits<T>::type;
  __shared__ unsigned long long bad_rows;
  __shared__ int64_t bad[kMaxBad];
  __shared__ int count;
  __shared__ int row_has_nan;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // The next kernel (the next layer's product) may start its prologue now: its own
  // griddepcontrol.wait still waits for this grid, which ends only after the product before it.
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
  if (flag != nullptr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
    if (*flag == 0u) return;  // the writer of x saw nothing non-finite
  }
  if (threadIdx.x == 0) bad_rows = 0ull;
  __syncthreads();
  // The scan, without a barrier per row (a thread marks its row's bit), so that the loads of
  // successive rows stay in flight; 16-byte loads where every row starts 16-byte aligned (x aligned,
  // k * sizeof(T) a multiple of 16), else one element per load. Rows shorter than the block (a
  // convolution's few channels) are scanned as one flat range of the block's rows, so that every
  // thread loads.
  constexpr int kPerVector = 16 / sizeof(B);
  const bool vector = reinterpret_cast<uintptr_t>(x) % 16 == 0 && k % kPerVector == 0;
  const int64_t units = vector ? k / kPerVector : k;  // loads per row
  const int64_t rows = blockIdx.x < m ? (m - 1 - blockIdx.x) / gridDim.x + 1 : 0;  // this block's, <= 64
  auto unit_bad = [&](int64_t i, int64_t u) {
    const B* row = x + i * k;
    if (vector) {
      const uint4 q = __ldg(reinterpret_cast<const uint4*>(row) + u);
      return AnyNonFinite<T>(q.x) || AnyNonFinite<T>(q.y) || AnyNonFinite<T>(q.z) || AnyNonFinite<T>(q.w);
    }
    return NonFinite<T>(row[u]);
  };
  if (units < blockDim.x) {
    const int u32 = static_cast<int>(units);
    const int total = static_cast<int>(rows) * u32;  // < 64 * 256
    for (int f = threadIdx.x; f < total; f += blockDim.x) {
      const int r = f / u32;
      if (unit_bad(blockIdx.x + static_cast<int64_t>(r) * gridDim.x, f - r * u32)) atomicOr(&bad_rows, 1ull << r);
    }
  } else {
    for (int r = 0; r < rows; ++r) {
      const int64_t i = blockIdx.x + static_cast<int64_t>(r) * gridDim.x;
      bool found = false;
      for (int64_t u = threadIdx.x; u < units; u += blockDim.x) found |= unit_bad(i, u);
      if (found) atomicOr(&bad_rows, 1ull << r);
    }
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (flag == nullptr) asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
  __syncthreads();
  const unsigned long long mask = bad_rows;
  if (mask == 0ull) return;
  const int64_t index_row = (k + 7) / 8;
  for (int r = 0; r < rows; ++r) {
    if (((mask >> r) & 1ull) == 0ull) continue;
    const int64_t i = blockIdx.x + static_cast<int64_t>(r) * gridDim.x;
    const B* row = x + i * k;
    __syncthreads();  // the previous row's readers are done with bad and count
    if (threadIdx.x == 0) count = 0, row_has_nan = 0;
    __syncthreads();
    for (int64_t kk = threadIdx.x; kk < k; kk += blockDim.x) {
      if (NonFinite<T>(row[kk])) {
        if (IsNaN<T>(row[kk])) row_has_nan = 1;  // every product term carries it, kept weights' too
        const int slot = atomicAdd(&count, 1);
        if (slot < kMaxBad) bad[slot] = kk;
      }
    }
    __syncthreads();
    const int found = count;
    const bool all = row_has_nan != 0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      bool nan = all, positive = false, negative = false;
      if (all) {
        // every output of the row
      } else if (found <= kMaxBad) {
        for (int b = 0; b < found && !nan; ++b) {
          nan = InfiniteTermMakesNaN<T>(values, index, k, index_row, j, bad[b], row[bad[b]], &positive, &negative);
        }
      } else {
        for (int64_t kk = 0; kk < k && !nan; ++kk) {
          nan = NonFinite<T>(row[kk]) &&
                InfiniteTermMakesNaN<T>(values, index, k, index_row, j, kk, row[kk], &positive, &negative);
        }
      }
      // Not NaN: every infinite position met a non-zero weight, all of one sign.
      y[i * ldy + j] = nan ? Bits<T>::kQuietNaN
                           : positive ? Bits<T>::kInfinity
                                      : relu ? static_cast<B>(0) : static_cast<B>(Bits<T>::kInfinity | SignBit<T>());
    }
  }
}

}  // namespace

template <typename T>
cudaError_t LaunchPropagateNonFinite(const T* x, int64_t m, int64_t k, const T* values, const uint8_t* index, int64_t n,
                                     T* y, int64_t ldy, bool relu, const unsigned int* flag, bool pdl,
                                     cudaStream_t stream) {
  if (m <= 0 || n <= 0 || k <= 0) return cudaSuccess;
  using B = typename Bits<T>::type;
  const auto kernel = ScanFixKernel<T>;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  static DependentLaunch dependent;
  bool use_pdl = false;
  err = dependent.Allowed(kernel, device, pdl, &use_pdl);
  if (err != cudaSuccess) return err;
  const int64_t blocks = std::min(m, std::max(kMinBlocks, (m + kRowsPerBlock - 1) / kRowsPerBlock));
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(blocks));
  config.blockDim = dim3(kThreads);
  config.stream = stream;
  cudaLaunchAttribute attribute;
  SetDependentLaunch(use_pdl, &attribute, &config);
  return cudaLaunchKernelEx(&config, kernel, reinterpret_cast<const B*>(x), m, k, reinterpret_cast<const B*>(values),
                            index, n, reinterpret_cast<B*>(y), ldy, relu, flag);
}

template cudaError_t LaunchPropagateNonFinite<float>(const float*, int64_t, int64_t, const float*, const uint8_t*,
                                                     int64_t, float*, int64_t, bool, const unsigned int*, bool,
                                                     cudaStream_t);
template cudaError_t LaunchPropagateNonFinite<__half>(const __half*, int64_t, int64_t, const __half*, const uint8_t*,
                                                      int64_t, __half*, int64_t, bool, const unsigned int*, bool,
                                                      cudaStream_t);
template cudaError_t LaunchPropagateNonFinite<__nv_bfloat16>(const __nv_bfloat16*, int64_t, int64_t,
                                                             const __nv_bfloat16*, const uint8_t*, int64_t,
                                                             __nv_bfloat16*, int64_t, bool, const unsigned int*, bool,
                                                             cudaStream_t);

}  // namespace onnxsparse::cuda
