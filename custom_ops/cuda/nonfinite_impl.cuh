// NaN and infinity in the activations on CUDA, as on the CPU (docs/semantics.md): the dense op
// multiplies the pruned zeros too, and 0 * NaN = 0 * Inf = NaN, so after the sparse product each
// op runs one kernel that scans its GEMM input X [m, k] for a NaN or an infinity and sets to NaN
// each output Y[i, j] whose weight row j does not keep a position kk of row i that holds one. It is
// launched on every call, with no host synchronisation and no allocation, so a CUDA graph captures
// it; with PDL its scan runs while the product still computes (it waits for the product only
// before it writes), so with nothing non-finite it costs about one launch.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace onnxsparse::cuda {

// After the product on `stream`: Y[i, j] (row stride ldy, j < n) = NaN when row i of x [m, k]
// (row-major, contiguous) holds a NaN, or an infinity at a position kk that row j of `index` (SPEC's
// [n, ceil(k/8)]) does not keep. So it may follow a product whose epilogue applied an activation
// (a ReLU may turn a NaN product into 0). `flag` (or null): a device word that the kernel which
// wrote x set non-zero where it wrote a NaN/Inf (cleared before it); 0 skips the scan. `pdl`:
// launch as a programmatic dependent where the GPU and the kernel's code allow. T: float, __half,
// __nv_bfloat16.
template <typename T>
cudaError_t LaunchPropagateNonFinite(const T* x, int64_t m, int64_t k, const uint8_t* index, int64_t n, T* y,
                                     int64_t ldy, const unsigned int* flag, bool pdl, cudaStream_t stream);

}  // namespace onnxsparse::cuda
