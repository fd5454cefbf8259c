// NaN and infinity in the activations on CUDA, as on the CPU (docs/semantics.md): the dense op
// multiplies the pruned zeros too, and 0 * NaN = 0 * Inf = NaN, so after the sparse product each
// op runs one kernel that scans its GEMM input X [m, k] for a NaN or an infinity and, in each row
// i that holds one, writes every output Y[i, j] as the dense product makes it (NaN or +-Inf). It is
// launched on every call, with no host synchronisation and no allocation, so a CUDA graph captures
// it; with PDL its scan runs while the product still computes (it waits for the product only
// before it writes), so with nothing non-finite it costs about one launch.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace onnxsparse::cuda {

// After the product on `stream`, for each row i of x [m, k] (row-major, contiguous) that holds a
// NaN or an infinity, Y[i, j] (row stride ldy, j < n) = NaN when row i holds a NaN, or an infinity
// at a position kk that row j of the weight (SPEC's values [n, k/2] and index [n, ceil(k/8)]) prunes
// or keeps as a zero, or infinities whose products with row j differ in sign; else the infinity of
// the products' sign, with `relu` (the product applied a ReLU before) 0 for -Inf. The other rows
// are left as the product wrote them. `flag` (or null): a device word that the kernel which wrote x
// set non-zero where it wrote a NaN/Inf (cleared before it); 0 skips the scan. `pdl`: launch as a
// programmatic dependent where the GPU and the kernel's code allow. T: float, __half,
// __nv_bfloat16.
template <typename T>
cudaError_t LaunchPropagateNonFinite(const T* x, int64_t m, int64_t k, const T* values, const uint8_t* index, int64_t n,
                                     T* y, int64_t ldy, bool relu, const unsigned int* flag, bool pdl, cudaStream_t stream);

}  // namespace onnxsparse::cuda
