// LaunchSparseGemm: which kernel family serves a call (GemmVariant), then its launcher. Host code
// only: the kernels are in the .cu files beside this one.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "cuda/sparse_gemm/launchers.h"
#include "cuda/static_switch.h"

namespace onnxsparse::cuda {

namespace detail {

bool DeviceHasPdl(int device) {
  // Two bits per device id below 64: known, and the answer.
  static std::atomic<uint64_t> known{0}, has{0};
  if (device < 0 || device >= 64) return false;
  const uint64_t bit = uint64_t{1} << device;
  if ((known.load(std::memory_order_acquire) & bit) == 0) {
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
    if (major >= 9) has.fetch_or(bit, std::memory_order_acq_rel);
    known.fetch_or(bit, std::memory_order_acq_rel);
  }
  return (has.load(std::memory_order_acquire) & bit) != 0;
}

}  // namespace detail

template <typename T>
cudaError_t LaunchSparseGemm(const SparseGemmArgs& args, cudaStream_t stream) {
  if (args.m <= 0 || args.n <= 0) return cudaSuccess;
  if constexpr (std::is_same_v<T, float>) {
    return detail::LaunchF32Gemm(args, stream);
  } else {
    // kAuto chooses: the packed weight when there is one (sparse tensor cores), else the cp.async
    // decoding kernel where the shape allows, else the register kernels (measured on an H200 with
    // benchmarks/cuda/probe.py own: kRegisterPipeline is faster at M <= 4, the remapped one above).
    const bool x_ok = args.k % 128 == 0 && reinterpret_cast<uintptr_t>(args.x) % 16 == 0;
    const bool async_ok = x_ok && reinterpret_cast<uintptr_t>(args.values) % 16 == 0 &&
                          reinterpret_cast<uintptr_t>(args.index) % 16 == 0;
    const GemmVariant registers =
        args.m <= 4 ? GemmVariant::kRegisterPipeline : GemmVariant::kRegisterPipelineRemapped;
    GemmVariant variant = args.variant;
    if (variant == GemmVariant::kAuto || variant == GemmVariant::kAsyncRingPacked) {
      variant = args.packed != nullptr && x_ok ? GemmVariant::kAsyncRingPacked
                                               : (async_ok ? GemmVariant::kAsyncRing : registers);
    }
    if (variant == GemmVariant::kAsyncRing && !async_ok) variant = registers;
    if (variant == GemmVariant::kAsyncRing) {
      SparseGemmArgs a = args;
      a.packed = nullptr;
      return M_TILES_SWITCH(a.m, kTiles, [&] { return detail::LaunchAsyncGemm<T, kTiles, false>(a, stream); });
    }
    if (variant == GemmVariant::kAsyncRingPacked) {
      return M_TILES_SWITCH(args.m, kTiles, [&] { return detail::LaunchAsyncGemm<T, kTiles, true>(args, stream); });
    }
    const bool remap = variant != GemmVariant::kRegisterPipeline;
    return M_TILES_SWITCH(args.m, kTiles, [&] { return detail::LaunchRegisterGemm<T, kTiles>(args, remap, stream); });
  }
}

template cudaError_t LaunchSparseGemm<float>(const SparseGemmArgs&, cudaStream_t);
template cudaError_t LaunchSparseGemm<__half>(const SparseGemmArgs&, cudaStream_t);
template cudaError_t LaunchSparseGemm<__nv_bfloat16>(const SparseGemmArgs&, cudaStream_t);

}  // namespace onnxsparse::cuda
