// The float sparse GEMM (GemmVariant does not apply): FMA, a warp per weight row.
#include "cuda/device_common.cuh"
#include "cuda/sparse_gemm/launchers.h"

namespace onnxsparse::cuda::detail {

namespace {

constexpr int kF32Rows = 8;  // activation rows per warp

__global__ void __launch_bounds__(128) SparseGemmF32Kernel(SparseGemmArgs p) {
  const int lane = threadIdx.x & 31;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * 4 + (threadIdx.x >> 5);
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kF32Rows;
  if (col >= p.n) return;
  const int64_t ngroups = p.k / 4;
  const float* values = static_cast<const float*>(p.values) + col * (p.k / 2);
  const uint8_t* index = p.index + col * ((p.k + 7) / 8);
  const float* x = static_cast<const float*>(p.x);
  float acc[kF32Rows] = {};
  for (int64_t g = lane; g < ngroups; g += 32) {
    const float v0 = values[2 * g];
    const float v1 = values[2 * g + 1];
    const uint32_t byte = index[g / 2];
    const uint32_t nibble = (g & 1) ? (byte >> 4) : (byte & 0xFu);
    const int64_t e0 = 4 * g + (nibble & 3u);
    const int64_t e1 = 4 * g + min(3u, 1u + ((nibble >> 2) & 3u));
#pragma unroll
    for (int i = 0; i < kF32Rows; ++i) {
      const int64_t row = m0 + i;
      if (row < p.m) acc[i] += v0 * x[row * p.k + e0] + v1 * x[row * p.k + e1];
    }
  }
#pragma unroll
  for (int i = 0; i < kF32Rows; ++i) {
    float v = acc[i];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, off);
    acc[i] = v;
  }
  if (lane < kF32Rows && m0 + lane < p.m) {
    float v = 0.f;
#pragma unroll
    for (int i = 0; i < kF32Rows; ++i) v = (i == lane) ? acc[i] : v;
    v *= p.alpha;
    if (p.bias != nullptr) v += static_cast<const float*>(p.bias)[col];
    static_cast<float*>(p.y)[(m0 + lane) * p.ldy + col] = v;
  }
}

}  // namespace

cudaError_t LaunchF32Gemm(const SparseGemmArgs& args, cudaStream_t stream) {
  const dim3 grid(CeilDiv(args.n, 4), CeilDiv(args.m, kF32Rows));
  SparseGemmF32Kernel<<<grid, 128, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace onnxsparse::cuda::detail
