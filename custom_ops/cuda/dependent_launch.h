// Whether a kernel may be launched as a programmatic dependent (PDL) of the kernel before it on
// its stream: only where the device has PDL (sm_90 and newer) and the kernel's code there was
// compiled for sm_90 or newer, so that it holds griddepcontrol.wait; code the driver compiled
// from older PTX must launch without it.
#pragma once
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>

#include "cuda/sparse_gemm/launchers.h"

namespace onnxsparse::cuda {

// One per kernel (a static at its launcher): the kernel's code is asked once per device, since
// GPUs of different architectures run different code; a bit per device id below 64 (a larger id
// launches without PDL). Thread-safe.
class DependentLaunch {
 public:
  // *allowed: launch `kernel` on `device` (the current device) as a programmatic dependent; false
  // without asking anything when not `wanted` (onnxsparse.cuda.pdl=0).
  template <typename Kernel>
  cudaError_t Allowed(Kernel kernel, int device, bool wanted, bool* allowed) {
    *allowed = false;
    const uint64_t bit = device >= 0 && device < 64 ? uint64_t{1} << device : 0;
    if (!wanted || bit == 0) return cudaSuccess;
    if ((known_.load(std::memory_order_acquire) & bit) == 0) {
      cudaFuncAttributes attributes;
      const cudaError_t err = cudaFuncGetAttributes(&attributes, kernel);
      if (err != cudaSuccess) return err;
      if (attributes.ptxVersion >= 90) sm90_code_.fetch_or(bit, std::memory_order_acq_rel);
      known_.fetch_or(bit, std::memory_order_acq_rel);
    }
    *allowed = (sm90_code_.load(std::memory_order_acquire) & bit) != 0 && detail::DeviceHasPdl(device);
    return cudaSuccess;
  }

 private:
  std::atomic<uint64_t> known_{0}, sm90_code_{0};
};

// Makes `config` a programmatic dependent launch when `allowed` (else an ordinary one); `attribute`
// must live until the launch.
inline void SetDependentLaunch(bool allowed, cudaLaunchAttribute* attribute, cudaLaunchConfig_t* config) {
  attribute->id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute->val.programmaticStreamSerializationAllowed = 1;
  config->attrs = attribute;
  config->numAttrs = allowed ? 1 : 0;
}

}  // namespace onnxsparse::cuda
