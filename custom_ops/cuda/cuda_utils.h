// Host-side helpers shared by the CUDA kernels: cudaError_t -> Ort::Status with the op's name,
// ORT's compute stream, owned device buffers, a per-stream scratch pool, and the mapping from
// ONNX Runtime's element types to CUDA's.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/ort_api.h"
#include "common/status.h"

namespace onnxsparse::cuda {

// Ort::Float16_t -> __half, Ort::BFloat16_t -> __nv_bfloat16, float -> float.
template <typename OrtT>
struct DeviceTypeOf {
  using type = OrtT;
};
template <>
struct DeviceTypeOf<Ort::Float16_t> {
  using type = __half;
};
template <>
struct DeviceTypeOf<Ort::BFloat16_t> {
  using type = __nv_bfloat16;
};
template <typename OrtT>
using DeviceType = typename DeviceTypeOf<OrtT>::type;

inline Ort::Status CudaStatus(const char* op, cudaError_t err, const char* what) {
  if (err == cudaSuccess) return Ort::Status{nullptr};
  return RuntimeError(op, StrCat(what, ": CUDA error ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")"));
}

#define ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, expr) ONNXSPARSE_RETURN_IF_ERROR(::onnxsparse::cuda::CudaStatus(op, (expr), #expr))

// ONNX Runtime's compute stream for this kernel call (the CUDA EP's stream, or a user stream).
inline cudaStream_t ComputeStream(OrtKernelContext* context) {
  return reinterpret_cast<cudaStream_t>(Ort::KernelContext(context).GetGPUComputeStream());
}

// The CUDA device of the execution provider that created a kernel (its default allocator's device:
// the session's device_id), -1 when it cannot be told (e.g. a kernel not placed on CUDA).
int KernelDevice(const OrtKernelInfo* info);

// Whether a kernel's input `input` is a constant (an initializer) that ONNX Runtime hands over at
// kernel creation; false when the input is absent or fed at run time.
bool InputIsConstant(const OrtKernelInfo* info, size_t input);

// The device of `stream` (cudaStreamGetDevice), else `fallback`; the legacy default stream (null)
// belongs to the current device, so `fallback` answers for it.
int StreamDevice(cudaStream_t stream, int fallback);

// Makes `device` the calling thread's current device for the object's lifetime and restores the
// previous one after: ORT's compute thread may have another device current than the session's
// (two sessions on two GPUs in one process), and every allocation, handle and launch must be on
// the kernel's. A negative device changes nothing. error() is cudaSuccess or why it failed.
class ScopedDevice {
 public:
  explicit ScopedDevice(int device) {
    if (device < 0) return;
    error_ = cudaGetDevice(&previous_);
    if (error_ == cudaSuccess && previous_ != device) {
      error_ = cudaSetDevice(device);
      if (error_ == cudaSuccess) restore_ = true;
    }
  }
  ~ScopedDevice() {
    if (restore_) cudaSetDevice(previous_);
  }
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;
  cudaError_t error() const { return error_; }

 private:
  int previous_ = 0;
  bool restore_ = false;
  cudaError_t error_ = cudaSuccess;
};

// One cudaMalloc'ed buffer, freed with the kernel that owns it.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { Reset(); }
  cudaError_t Allocate(size_t bytes) {
    Reset();
    if (bytes == 0) return cudaSuccess;
    cudaError_t err = cudaMalloc(&ptr_, bytes);
    if (err == cudaSuccess) bytes_ = bytes;
    else ptr_ = nullptr;
    return err;
  }
  // Grows (never shrinks); returns cudaSuccess without allocating when big enough already.
  cudaError_t Reserve(size_t bytes) { return bytes <= bytes_ ? cudaSuccess : Allocate(bytes); }
  void Reset() {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  void* get() const { return ptr_; }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Scratch memory for one stream on one device (the current one, which owns the stream), shared by every kernel that runs on it (kernels on one stream run
// one after another, so they can share). It grows at first calls for larger shapes and keeps the
// buffers it outgrew, so a CUDA graph captured earlier never points at freed memory. Thread-safe.
// Returns nullptr and sets *err when the allocation fails.
void* StreamScratch(cudaStream_t stream, size_t bytes, cudaError_t* err);

inline size_t AlignUp(size_t bytes, size_t alignment = 256) { return (bytes + alignment - 1) / alignment * alignment; }

// Microseconds per call of launch() (which returns true on success) on `stream`: one warm-up
// call, then `passes` timed passes of `reps` calls with events, the fastest kept; a pass longer
// than stop_ms ends the timing (slow shapes need no second pass). -1 on any error.
template <typename Launch>
float TimeOnStream(cudaStream_t stream, int reps, Launch launch, int passes = 1, float stop_ms = 0.f) {
  cudaEvent_t start = nullptr, stop = nullptr;
  if (cudaEventCreate(&start) != cudaSuccess) return -1.f;
  if (cudaEventCreate(&stop) != cudaSuccess) {
    cudaEventDestroy(start);
    return -1.f;
  }
  bool ok = launch();
  float best_ms = -1.f;
  for (int pass = 0; pass < passes && ok; ++pass) {
    float ms = 0.f;
    ok = cudaEventRecord(start, stream) == cudaSuccess;
    for (int r = 0; r < reps && ok; ++r) ok = launch();
    ok = ok && cudaEventRecord(stop, stream) == cudaSuccess && cudaEventSynchronize(stop) == cudaSuccess &&
         cudaEventElapsedTime(&ms, start, stop) == cudaSuccess;
    if (ok) best_ms = best_ms < 0.f ? ms : std::min(best_ms, ms);
    if (ms > stop_ms) break;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ok ? best_ms * 1000.f / reps : -1.f;
}

}  // namespace onnxsparse::cuda
