// Chooses and runs the int8 sparse GEMM of one QMatMulCompress / QConv2dCompress node, by the same
// rule and from the same tuning cache as the fp16 ops (SparseGemmRunner, DEVELOPERS.md): for a
// constant weight the own kernel (qgemm_impl.cu) and cuSPARSELt (int8 x int8 -> int32 on the rows
// that are a multiple of 32, then the epilogue pass; the own kernel on the rest; below 32 rows, M
// padded to 32 in the scratch memory and the products of A's rows kept) are both candidates. The
// choice per (slot, M), made at its first call (GemmChoice): the tuning cache's measurements of both
// (dtype "int8"); else, searching (onnxsparse.cusparselt.tune=search), both measured and cached;
// else the default rule: M <= onnxsparse.cuda.small_m_max the own kernel, above it cuSPARSELt timed
// against the own kernel up to onnxsparse.cuda.own_timed_m_max. A weight fed at run time, or a
// shape cuSPARSELt refuses (K % 16 != 0, ...): the own kernel.
// A uint8 A goes to cuSPARSELt as A - 128 (a pass into scratch memory); the epilogue corrects the
// zero point with the weight's row sums, computed once for a constant weight. A QMatMulCompress
// output is scaled (rounded and saturated when quantized) in cuSPARSELt's own epilogue (alpha
// vector, float bias; a quantized Y without Relu and N a multiple of 16, or a float Y) unless
// onnxsparse.cuda.int8_scaled_output=0 or cuSPARSELt makes no plan for it: no int32 product and no
// epilogue pass; within one step of the exact form at rounding ties (docs/ops.md).
#pragma once
#include <cuda_runtime_api.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "common/ort_api.h"
#include "common/runtime_options.h"
#include "cuda/cuda_utils.h"
#include "cuda/cusparselt_gemm.h"
#include "cuda/gemm_choice.h"
#include "cuda/qgemm_impl.cuh"

namespace onnxsparse::cuda {

class QGemmRunner {
 public:
  // Reads at kernel creation whether the weight (values_input, index_input) is constant, and the
  // session's options, logger and device.
  void Init(const OrtKernelInfo* info, size_t values_input, size_t index_input);

  int Device(cudaStream_t stream) const { return device_ >= 0 ? device_ : StreamDevice(stream, device_); }
  const OrtLogger* logger() const { return logger_; }

  // Checks the whole index once for a constant weight (first call; synchronises then), and returns
  // in *wsum the row sums of all `rows` weight rows (computed once for a constant weight, every call
  // otherwise, into a buffer allocated at the first call).
  Ort::Status Prepare(const char* op, cudaStream_t stream, const int8_t* values, const uint8_t* index, int64_t rows,
                      int64_t k, const int32_t** wsum);

  // Scratch bytes that Run may use for a GEMM of this shape (0 when only the own kernel can serve).
  size_t ScratchBytes(int64_t m, int64_t n, int64_t k) const;

  // One GEMM (args.values/index at the slot's rows, args.epi complete); `scratch` holds
  // ScratchBytes(m, n, k) bytes (256-byte aligned).
  Ort::Status Run(const char* op, cudaStream_t stream, int slot, const QGemmArgs& args, void* scratch);

  // cuSPARSELt serves the rows of M that are a multiple of this.
  static constexpr int64_t kMAlign = 32;

 private:
  // The cuSPARSELt weight of a slot, built at its first use (null when cuSPARSELt refuses it). mutex_ held.
  // type kInt8 (the int32 product), or kInt8Scaled / kInt8ScaledFloat (the output scaled in
  // cuSPARSELt's epilogue; a weight of its own).
  SparseLtWeight* WeightLocked(const char* op, cudaStream_t stream, int slot, const QGemmArgs& args, ElementType type);
  // Whether the scaled form serves this node: decided once, at its first call outside a CUDA-graph
  // capture, by `probe` making and timing its plan (a cuSPARSELt that refuses the alpha vector or the
  // output type, or a probe that fails: no, said in the log, and the int32 product serves). mutex_
  // not held; no lock once decided.
  bool ScaledServes(const char* op, cudaStream_t stream, int slot, const QGemmArgs& args,
                    const std::function<Ort::Status(SparseLtWeight*, float*)>& probe);
  // The scaled form's per-column alpha and bias (floats), in terms_ (whose int32 offsets it does not use).
  float* ScaledAlpha() const { return reinterpret_cast<float*>(static_cast<char*>(terms_.get()) + terms_scale_at_); }
  float* ScaledBias() const { return static_cast<float*>(terms_.get()); }

  int device_ = -1;
  bool weight_constant_ = false;
  RuntimeOptions options_;
  const OrtLogger* logger_ = nullptr;
  std::mutex mutex_;
  bool validated_ = false;
  bool wsum_ready_ = false;
  DeviceBuffer wsum_;
  DeviceBuffer terms_;  // per column: int32 offsets, then (at terms_scale_at_) fp32 multipliers
  size_t terms_scale_at_ = 0;
  GemmChoice choice_;  // own kernel or cuSPARSELt, by (slot, M); guarded by mutex_
  // [0]: the int32-product weights, [1]: the scaled form's; by slot.
  std::vector<std::unique_ptr<SparseLtWeight>> sparselt_[2];
  std::vector<std::string> sparselt_error_[2];  // by slot: why it could not be built
  enum class Scaled { kUnknown, kYes, kRefused };
  std::atomic<Scaled> scaled_{Scaled::kUnknown};  // written once, under mutex_
};

}  // namespace onnxsparse::cuda
