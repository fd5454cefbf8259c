// Chooses and runs the sparse GEMM of one MatMulCompress / Conv2dCompress node:
//   fp16/bf16, constant weight, M >= 16: the own kernel and cuSPARSELt (on the rows that are a
//     multiple of 16; the own kernel on the rest) are both candidates. The choice per M, at its
//     first call (GemmChoice, gemm_choice.h): the tuning cache's measurements of both; else, searching
//     (onnxsparse.cusparselt.tune=search, set by `onnxsparse tune`), both measured and cached; else
//     the default rule: M <= onnxsparse.cuda.small_m_max (32) the own kernel, above it cuSPARSELt
//     (cached configuration or its default algorithm, never a search) timed against the own kernel
//     up to onnxsparse.cuda.own_timed_m_max (1024);
//   otherwise (M < 16, float, a weight fed at run time): the own kernel. For a constant fp16/bf16
//     weight with K % 128 == 0 it reads the weight packed for the sparse tensor cores (built on the
//     first such call outside a CUDA-graph capture; onnxsparse.cuda.pack=0 keeps SPEC's form), and
//     it is launched as a programmatic dependent of the previous kernel (onnxsparse.cuda.pdl=0: not).
// The options are the session's (common/runtime_options.h), read when the kernel is created; the
// per-M choice is logged on the session's logger (VERBOSE; WARNING with onnxsparse.log_verbose).
// A weight is split into `slots` independent row blocks (Conv's groups), each its own GEMM.
// Everything a runner holds (cuSPARSELt weights and plans, packed weights, the NaN/Inf flag) lives
// on its kernel's device, current while it runs; per-process state elsewhere (cuSPARSELt handles,
// the in-process tuned choices, stream scratch, kernel attributes) is kept per device.
#pragma once
#include <cuda_runtime_api.h>

#include <memory>
#include <mutex>
#include <utility>
#include <string>
#include <vector>

#include "common/ort_api.h"
#include "common/runtime_options.h"
#include "cuda/cuda_utils.h"
#include "cuda/cusparselt_gemm.h"
#include "cuda/gemm_choice.h"
#include "cuda/sparse_gemm_impl.cuh"

namespace onnxsparse::cuda {

class SparseGemmRunner {
 public:
  // Reads at kernel creation whether the weight (values_input, index_input) and the bias are
  // constant initializers, and the session's options and logger (CurrentKernelContext).
  void Init(const OrtKernelInfo* info, size_t values_input, size_t index_input, size_t bias_input);

  // One GEMM: args.values/index/bias already point at the slot's rows. T is float, __half or
  // __nv_bfloat16.
  template <typename T>
  Ort::Status Run(const char* op, cudaStream_t stream, int slot, const SparseGemmArgs& args);
  // From now on every Run ends with a ReLU on all of Y (after the bias): in cuSPARSELt's epilogue
  // where it serves (the bias constant or absent), else an elementwise pass over the rows it did
  // not. Y's rows must then be contiguous (ldy == n). Set at kernel creation, before any Run.
  void SetRelu(bool on) { relu_ = on; }
  bool relu() const { return relu_; }

  // Starts making, on threads, the cuSPARSELt plans that the tuning cache lists for this kernel's
  // constant weight (SparseLtWeight::Prepare; type: fp16 or bf16), with SetRelu's ReLU: called at
  // kernel creation, after SetRelu. The kernel's other cuSPARSELt weights may use preparer() too.
  void PrepareCuSparseLt(const OrtKernelInfo* info, ElementType type);
  PlanPreparer* preparer() { return &preparer_; }
  int kernel_device() const { return device_; }  // as told at creation (-1: not told)
  // The [rows, columns] of a constant 2-D input (the weight's values), false when it is not one.
  static bool ConstantMatrixShape(const OrtKernelInfo* info, size_t input, int64_t* rows, int64_t* columns);

  // The device this kernel computes on: its stream's, else its execution provider's (the session's
  // device_id), -1 when neither can be told. The op makes it current for its Compute (ScopedDevice):
  // the calling thread's current device may be another session's.
  // The device told at creation is used as is: no CUDA query in Compute, which a graph capture forbids.
  int Device(cudaStream_t stream) const { return device_ >= 0 ? device_ : StreamDevice(stream, device_); }

  // The session's logger, and the severity of the kernels' trace lines (WARNING with
  // onnxsparse.trace, else VERBOSE).
  const OrtLogger* logger() const { return logger_; }
  OrtLoggingLevel trace_level() const {
    return options_.trace ? ORT_LOGGING_LEVEL_WARNING : ORT_LOGGING_LEVEL_VERBOSE;
  }

  // NaN/Inf like the dense op (docs/semantics.md): after the product Y [m, n] (row stride ldy) of
  // x [m, k] (contiguous) with the weight rows of `values` and `index`, the outputs of the rows of x
  // that hold a NaN/Inf become what the dense product makes them, after SetRelu's ReLU where it is on
  // (LaunchPropagateNonFinite). One kernel on the stream, every call (no host sync,
  // no allocation), so CUDA graphs capture it. `flag`: the device word the writer of x set where it
  // wrote a NaN/Inf (an im2col pass), or null (x is scanned).
  template <typename T>
  Ort::Status PropagateNonFinite(const char* op, cudaStream_t stream, const T* x, int64_t m, int64_t k,
                                 const T* values, const uint8_t* index, int64_t n, T* y, int64_t ldy,
                                 const unsigned int* flag = nullptr);

  // Validates the whole index once for a constant weight (first call; synchronises then).
  Ort::Status ValidateOnce(const char* op, cudaStream_t stream, const uint8_t* index, int64_t rows, int64_t k);

 private:
  // The own kernel's arguments for this call: the packed weight of the slot (built here at its
  // first use outside a capture) where it applies. mutex_ held.
  template <typename T>
  Ort::Status OwnArgsLocked(const char* op, cudaStream_t stream, int slot, const SparseGemmArgs& args,
                            SparseGemmArgs* own);
  // The cuSPARSELt weight of a slot, built at its first use (null when cuSPARSELt rejects it). mutex_ held.
  SparseLtWeight* WeightLocked(const char* op, cudaStream_t stream, int slot, const SparseGemmArgs& args,
                               ElementType type, bool lt_bias);

  int device_ = -1;  // the execution provider's device (KernelInfo)
  size_t values_input_ = 0;
  bool weight_constant_ = false;
  bool bias_constant_ = false;
  RuntimeOptions options_;
  const OrtLogger* logger_ = nullptr;
  GemmChoice choice_;  // own kernel or cuSPARSELt, by (slot, M); guarded by mutex_
  bool validated_ = false;
  bool relu_ = false;  // SetRelu
  std::mutex mutex_;
  std::vector<std::unique_ptr<SparseLtWeight>> sparselt_;  // by slot
  std::vector<std::string> sparselt_error_;                // by slot: why it could not be built
  std::vector<std::unique_ptr<DeviceBuffer>> packed_;      // by slot: the packed weight, or null
  std::vector<bool> own_ran_;                              // by slot: the own kernel served a call
  PlanPreparer preparer_;  // last: joined first when the kernel goes
};

}  // namespace onnxsparse::cuda
