// NaN and infinity in the activations on CUDA, as on the CPU (docs/semantics.md): the dense op
// multiplies the pruned zeros too, and 0 * NaN = 0 * Inf = NaN, so after the sparse product each
// op scans its GEMM input X [m, k] for a NaN or an infinity (a flag in device memory) and a fix-up
// kernel sets to NaN each output Y[i, j] whose weight row j does not keep a position kk of row i
// that holds one. Both are launched on every call, with no host synchronisation and no allocation
// (the flag is the caller's, allocated once), so a CUDA graph captures them: the fix-up's blocks
// exit at once when the flag is clear.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace onnxsparse::cuda {

// *flag = 0, scan x [m, k] (row-major, contiguous), then where the flag is set: Y[i, j] (row
// stride ldy, j < n) = NaN when row i of x holds a NaN/Inf at a position kk that row j of `index`
// (SPEC's [n, ceil(k/8)]) does not keep. T: float, __half, __nv_bfloat16.
template <typename T>
cudaError_t LaunchPropagateNonFinite(const T* x, int64_t m, int64_t k, const uint8_t* index, int64_t n, T* y,
                                     int64_t ldy, unsigned int* flag, cudaStream_t stream);

}  // namespace onnxsparse::cuda
