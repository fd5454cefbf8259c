// Launchers of the sparse GEMM kernels that read SPEC's compressed form directly, and of the small
// helpers around them. Host code includes this header only; the kernels live in sparse_gemm/, one
// translation unit per kernel family and element type (registers_*, async_*, f32, pack_weight,
// elementwise), and sparse_gemm/dispatch.cc chooses among them.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace onnxsparse::cuda {

// The fp16/bf16 kernels (the numbers are those of benchmarks/cuda/gemm_probe.cu's v3..v7).
enum class GemmVariant : int {
  // kAsyncRingPacked with a packed weight, else kAsyncRing where the shape allows, else
  // kRegisterPipeline (M <= 4) or kRegisterPipelineRemapped.
  kAuto = 0,
  kRegisterPipeline = 3,          // a register pipeline, 8 contiguous groups per lane (any K)
  kRegisterPipelineRemapped = 4,  // the same with whole-sector loads (any K)
  kAsyncRing = 5,                 // a cp.async ring per warp decoding SPEC's form (K % 128 == 0,
                                  // 16-byte aligned operands)
  kAsyncRingPacked = 7,           // the same ring on the packed weight and the sparse tensor cores
};

// Y[m, n] (row stride ldy) = alpha * X[m, k] @ W + bias, W the dense [k, n] matrix that
// (values [n, k/2], index [n, ceil(k/8)]) encode. bias may be null. fp16/bf16 accumulate in fp32
// on the tensor cores (mma.sync, the weight decoded in registers); float uses FMA.
struct SparseGemmArgs {
  const void* x = nullptr;
  int64_t m = 0;
  int64_t k = 0;
  int64_t n = 0;
  const void* values = nullptr;
  const uint8_t* index = nullptr;
  const void* bias = nullptr;
  float alpha = 1.0f;
  void* y = nullptr;
  int64_t ldy = 0;
  // fp16/bf16: which kernel (kAuto chooses; a variant the shape does not allow falls back;
  // benchmarks/cuda/gemm_probe.cu compares them).
  GemmVariant variant = GemmVariant::kAuto;
  // kAsyncRing and kAsyncRingPacked are launched as programmatic dependents (PDL, sm_90 and newer):
  // they start while the previous kernel on the stream finishes, and wait for it before reading X
  // (and, unless weight_constant, the weight) or writing Y.
  bool pdl = true;
  // kAsyncRing and kAsyncRingPacked: a grid of the blocks the GPU holds at once, each streaming
  // several tiles of 16 weight rows (a warp's cp.async ring runs on from one tile into the next),
  // rather than one block per tile.
  bool persistent = true;
  // The weight (values, index) is constant for the session, so a kernel launched as a
  // programmatic dependent may read it before the previous kernel has finished.
  bool weight_constant = false;
  // The same weight in the packed form (LaunchPackWeight), or null. When set (K % 128 == 0), the
  // cp.async kernel reads it: one contiguous tile per stage instead of 16 row pieces.
  const void* packed = nullptr;
};

// The packed form of a weight of n rows (fp16/bf16): tiles of 16 rows x 128 K, each contiguous and
// laid out as the registers and metadata of the sparse tensor-core MMA (mma.sp), which the cp.async
// kernel then feeds without decoding. 9/16 of the dense bytes, like SPEC's form.
bool CanPackWeight(int64_t k, const void* values, const uint8_t* index);
size_t PackedWeightBytes(int64_t n, int64_t k);
template <typename T>
cudaError_t LaunchPackWeight(const void* values, const uint8_t* index, int64_t n, int64_t k, void* packed,
                             cudaStream_t stream);

template <typename T>
cudaError_t LaunchSparseGemm(const SparseGemmArgs& args, cudaStream_t stream);

// dense[rows, k] = the matrix (values, index) encode.
template <typename T>
cudaError_t LaunchDecompress(const T* values, const uint8_t* index, int64_t rows, int64_t k, T* dense,
                             cudaStream_t stream);

// y[i, j] += bias[j] for i < m, j < n (row stride ldy), in fp32.
template <typename T>
cudaError_t LaunchAddBias(T* y, int64_t m, int64_t n, int64_t ldy, const T* bias, cudaStream_t stream);

// out[b, c, r] = in[b, r, c] (+ bias[c] when bias is not null), for b < batch.
template <typename T>
cudaError_t LaunchTranspose(const T* in, T* out, int64_t batch, int64_t rows, int64_t cols, const T* bias,
                            cudaStream_t stream);

}  // namespace onnxsparse::cuda

namespace onnxsparse::cuda {
// *invalid_count (device) += number of groups of index [rows, ceil(k/8)] holding the invalid
// 2-bit value 3.
cudaError_t LaunchCountInvalidNibbles(const uint8_t* index, int64_t rows, int64_t k, unsigned int* invalid_count,
                                      cudaStream_t stream);
}  // namespace onnxsparse::cuda
