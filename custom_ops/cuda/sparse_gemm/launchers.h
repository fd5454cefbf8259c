// The launchers of each kernel family, one explicit instantiation per translation unit (the way
// flash-attention's and vLLM's kernel folders split theirs), so that nvcc compiles the families in
// parallel. dispatch.cc chooses among them; nothing else calls these.
#pragma once
#include <cuda_runtime_api.h>

#include "cuda/sparse_gemm_impl.cuh"

namespace onnxsparse::cuda::detail {

// fp16/bf16 register-pipeline kernels (registers_{fp16,bf16}.cu); kMTiles 1, 2 or 4 tiles of 8
// activation rows; remap: GemmVariant::kRegisterPipelineRemapped.
template <typename T, int kMTiles>
cudaError_t LaunchRegisterGemm(const SparseGemmArgs& args, bool remap, cudaStream_t stream);

// fp16/bf16 cp.async ring kernels (async_{decode,packed}_{fp16,bf16}.cu); kPacked reads args.packed.
template <typename T, int kMTiles, bool kPacked>
cudaError_t LaunchAsyncGemm(const SparseGemmArgs& args, cudaStream_t stream);

// The float kernel (f32.cu).
cudaError_t LaunchF32Gemm(const SparseGemmArgs& args, cudaStream_t stream);

// Whether `device` runs programmatic dependent launches (compute capability 9.0 or newer); cached.
bool DeviceHasPdl(int device);

}  // namespace onnxsparse::cuda::detail
