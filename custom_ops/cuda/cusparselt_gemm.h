// cuSPARSELt, loaded at run time (dlopen of libcusparseLt.so.0), for the large-M sparse GEMMs.
// A SparseLtWeight holds one weight in cuSPARSELt's compressed form (built once, from SPEC's form)
// and a plan per M, shared with every weight of the process with the same problem (making one took
// 0.2-0.37 s on an H200 with cuSPARSELt 0.8.0, nearly all of it its algorithm selection): the
// configuration of the tuning cache file (onnxsparse.cusparselt.cache), else, when searching (onnxsparse.cusparselt.tune=search, which `onnxsparse tune` sets), the fastest of
// every configuration known to be safe, timed at the first call of the M and written to the file;
// else cuSPARSELt's default algorithm. The choice is shared by every weight of the same problem.
// A weight and its plans live on the device current when it was built (its kernel's).
// Every call after the first for an M launches on the given stream with no allocation and no host
// synchronisation, so CUDA graphs can capture it.
//
// Implemented in cusparselt/: loader.cc (dlopen), tuning_cache.cc (the cache file, plain C++),
// plans.cc (compressed weight, plans, workspaces) and timing.cc (the configuration search).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/ort_api.h"
#include "common/runtime_options.h"
#include "cuda/cuda_utils.h"

namespace onnxsparse::cuda {

// kInt8 (QMatMulCompress, QConv2dCompress): int8 weight and activations, an int32 product (compute
// 32I, alpha 1, no bias), which the int8 epilogue turns into the output.
// kInt8Scaled (QMatMulCompress with a quantized output): int8 in, int8 out, scaled in cuSPARSELt's
// epilogue: D = saturate(round(alpha[row] * acc + bias[row])), alpha a device vector
// (SetAlphaVector) and bias float. kInt8ScaledFloat: the same with a float D (and a fused ReLU,
// SetRelu). Their values are the tuning cache's CacheDtype.
enum class ElementType { kFloat16, kBFloat16, kInt8, kInt8Scaled, kInt8ScaledFloat };

// The ElementType of a 16-bit float device type: __half, else __nv_bfloat16.
template <typename T>
constexpr ElementType HalfElementType() {
  return std::is_same_v<T, __half> ? ElementType::kFloat16 : ElementType::kBFloat16;
}

// Whether cuSPARSELt could be loaded; when not, *why says so (built without it, library missing).
// `library` (onnxsparse.cusparselt.library) is tried first; a load that failed is tried again with
// a library not tried yet (cusparselt/loader.h).
bool CusparseLtAvailable(const std::string& library, std::string* why);
// The loaded library's version (major*1000 + minor*100 + patch), 0 when not loaded.
int CusparseLtVersion();

// The own kernel's time per call on problem (M = m, all rows) from the tuning cache, written by a
// search (onnxsparse.cusparselt.tune=search) beside cuSPARSELt's; -1 when none (or no cuSPARSELt,
// whose version keys the file). Store writes one (only when searching). Current device.
float CachedOwnKernelUs(const RuntimeOptions& options, ElementType type, int64_t m, int64_t n, int64_t k, int64_t ldy,
                        bool bias);
void StoreOwnKernelUs(const RuntimeOptions& options, const OrtLogger* logger, ElementType type, int64_t m, int64_t n,
                      int64_t k, int64_t ldy, bool bias, float us);

// Says once per process (WARNING, on `logger`) that a GEMM (`what`) runs untuned and what tunes it.
void NoteUntunedOnce(const OrtLogger* logger, const std::string& what);

// Threads that make cuSPARSELt plans ahead (SparseLtWeight::Prepare), joined when it goes: a
// kernel's destruction waits for the plans it started (one algorithm selection each, under 0.4 s).
class PlanPreparer {
 public:
  PlanPreparer() = default;
  ~PlanPreparer();
  PlanPreparer(const PlanPreparer&) = delete;
  PlanPreparer& operator=(const PlanPreparer&) = delete;
  void Add(std::function<void()> job) { threads_.emplace_back(std::move(job)); }

 private:
  std::vector<std::thread> threads_;
};

class SparseLtWeight {
 public:
  // Makes ahead, on threads of `preparer`, the plans of every problem the tuning cache lists for a
  // weight of this shape on `device` (any M), so that the first call of such an M finds its plan
  // made: one algorithm selection per problem took 0.2-0.37 s on an H200, and they run in parallel
  // (8 at once in 0.34 s against 2.69 s one after another). Each problem once per process; nothing
  // without a tuned entry (a first call then makes its plan itself). relu: the plans' fused ReLU
  // (Run's SetRelu, RunBatched's fuse_relu) as the kernel expects it to be.
  static void Prepare(const RuntimeOptions& options, int device, ElementType type, int64_t n, int64_t k, bool bias,
                      bool relu, PlanPreparer* preparer);

  // The options (tuning, cache file, configuration range) and the logger of the kernel that owns it.
  SparseLtWeight(const RuntimeOptions& options, const OrtLogger* logger);
  ~SparseLtWeight();
  SparseLtWeight(const SparseLtWeight&) = delete;
  SparseLtWeight& operator=(const SparseLtWeight&) = delete;

  // Builds the compressed weight from SPEC's (values [n, k/2], index [n, ceil(k/8)]) on the device.
  // bias (device, [n], may be null) is fused into the GEMM; it must outlive this object.
  // Synchronises `stream` (done once, at kernel creation or first call).
  Ort::Status Build(const char* op, ElementType type, const void* values, const uint8_t* index, int64_t n, int64_t k,
                    const void* bias, cudaStream_t stream);
  bool ready() const { return ready_; }
  // A device vector of n floats that every product multiplies row r of D by (cuSPARSELt's alpha
  // vector scaling), read at each call (so it may change between calls); set before the first Run.
  void SetAlphaVector(const float* alpha) { alpha_vector_ = alpha; }
  // A ReLU in the epilogue of Run's plans (RunBatched has its own); set before the first Run.
  void SetRelu(bool on) { plain_relu_ = on; }

  // Y[m, n] (row stride ldy) = alpha * X[m, k] @ W (+ bias). Returns false in *used (and OK) when
  // cuSPARSELt does not take this shape (the caller then runs its own kernel).
  Ort::Status Run(const char* op, const void* x, int64_t m, void* y, int64_t ldy, float alpha, cudaStream_t stream,
                  bool* used);

  // Prepares the plan of this M (searching and timing it when not capturing a CUDA graph;
  // overwrites y) and returns in *us the chosen one's time per call, or -1 when cuSPARSELt
  // does not take this shape or it was not measured.
  Ort::Status Time(const char* op, const void* x, int64_t m, void* y, int64_t ldy, float alpha, cudaStream_t stream,
                   float* us);

  // cuSPARSELt needs M a multiple of this; the caller runs the remainder rows itself.
  static constexpr int64_t kMAlign = 16;

  // Conv's per-image product, with no transpose (cusparselt/batched.cc): for b < batches,
  // Y_b [n, cols] = W [n, k] . X_b [k, cols] (+ bias, then ReLU when fuse_relu), all row-major and
  // contiguous (batch strides k*cols and n*cols; the weight broadcast to every b), i.e. NCHW's
  // output of an image from its im2col matrix in (kh, kw, c) row order. Rows cols elements apart
  // (described with the alignment that allows; cuSPARSELt may refuse below 16 bytes). The plan is tuned as Run's (cache, search or default algorithm), keyed by M = batches*cols
  // and ldy = -cols. *used false (and OK): cuSPARSELt does not take this shape. With us != null
  // (not capturing), *us gets the plan's time per call (-1 when unknown) and nothing else runs.
  Ort::Status RunBatched(const char* op, const void* x, int64_t batches, int64_t cols, void* y, bool fuse_relu,
                         cudaStream_t stream, bool* used, float* us = nullptr);

 private:
  struct Plan;
  // The plan of a problem, one per process: (device, element type, m, n, k, ldy, fused bias,
  // fused ReLU, alpha vector). Made (Plan::made) by the first weight that asks, under its mutex.
  using PlanKey = std::tuple<int, int, int64_t, int64_t, int64_t, int64_t, bool, bool, bool>;
  static std::shared_ptr<Plan> SharedPlan(const PlanKey& key);
  // Describes, configures (this process, cache, search or default) and plans *p for this weight's
  // problem at (m, ldy); the caller holds p->mutex. prepare (Prepare's thread, no weight, x or y):
  // only with a configuration from this process or the cache, else *p is left as it was.
  Ort::Status MakePlan(const char* op, int64_t m, int64_t ldy, const void* x, void* y, float alpha,
                       cudaStream_t stream, bool capturing, bool prepare, Plan* p);
  // Prepare's job: the plan of (m, ldy) for a weight of this shape, made unless made or being made.
  void PreparePlan(ElementType type, int64_t n, int64_t k, bool bias, bool relu, int64_t m, int64_t ldy);
  // The key of this weight's plan of (m, ldy) on `device` (its type, shape and epilogue).
  PlanKey KeyFor(int device, int64_t m, int64_t ldy) const {
    return PlanKey{device, static_cast<int>(type_), m, n_, k_, ldy, bias_ != nullptr, ldy < 0 ? relu_ : plain_relu_,
                   alpha_vector_ != nullptr};
  }
  // Points the plan's matmul descriptor at this weight's bias where it holds another's; the caller
  // holds plan->mutex.
  Ort::Status SetBiasLocked(const char* op, Plan* plan);
  // The severity of the trace lines (WARNING with onnxsparse.trace, else VERBOSE).
  OrtLoggingLevel TraceLevel() const { return options_.trace ? ORT_LOGGING_LEVEL_WARNING : ORT_LOGGING_LEVEL_VERBOSE; }
  // Calls cuSPARSELt's matmul of `plan` with this weight (its compressed form, bias, workspace).
  Ort::Status Matmul(const char* op, Plan* plan, const void* alpha, const void* x, void* y, cudaStream_t stream);
  // Whether cuSPARSELt takes this call: M a positive multiple of kMAlign, X and Y 16-byte aligned
  // and every column of Y too (the descriptors promise 8-element alignment).
  bool Takes(const void* x, int64_t m, const void* y, int64_t ldy) const;
  Ort::Status GetPlan(const char* op, int64_t m, int64_t ldy, const void* x, void* y, float alpha,
                      cudaStream_t stream, Plan** plan);
  // The id sweep: times configurations 0..max_id (overwrites y) and sets plan's config_id, best_us.
  Ort::Status TimeConfigs(const char* op, int max_id, int64_t m, const void* x, void* y, float alpha,
                          cudaStream_t stream, Plan* plan);
  // The plan of plan->config_id (-1: cuSPARSELt's default algorithm).
  Ort::Status InitPlan(const char* op, Plan* plan);
  // The descriptors and matmul of a batched plan (RunBatched); false when cuSPARSELt refuses them.
  bool DescribeBatched(int64_t batches, int64_t cols, Plan* plan);
  cudaError_t GrowWorkspace(size_t bytes);
  void* Workspace() const;

  RuntimeOptions options_;
  const OrtLogger* logger_ = nullptr;
  bool ready_ = false;
  ElementType type_ = ElementType::kFloat16;
  int64_t n_ = 0;
  int64_t k_ = 0;
  const void* bias_ = nullptr;
  const float* alpha_vector_ = nullptr;
  bool plain_relu_ = false;
  // What cusparseLtMatmul's alpha points at: the alpha vector when set, else the scalar.
  const void* AlphaArg(const float& alpha) const {
    return alpha_vector_ != nullptr ? static_cast<const void*>(alpha_vector_) : static_cast<const void*>(&alpha);
  }
  bool relu_ = false;  // the batched plans' fused ReLU (RunBatched's fuse_relu; one value per weight)
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::map<std::pair<int64_t, int64_t>, std::shared_ptr<Plan>> plans_;  // by (m, ldy)
  DeviceBuffer compressed_;
  std::vector<std::unique_ptr<DeviceBuffer>> workspaces_;  // the last is the current one
  std::mutex mutex_;
};

}  // namespace onnxsparse::cuda
