// SparseLtWeight: the weight in cuSPARSELt's compressed form, a plan per (M, ldy) with its chosen
// configuration (from this process, the tuning cache file, or a search: timing.cc), workspaces.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <set>
#include <tuple>

#include "common/log.h"
#include "common/status.h"
#include "cuda/cusparselt/internal.h"
#include "cuda/cusparselt/tuning_cache.h"
#include "cuda/cusparselt_gemm.h"
#include "cuda/qgemm_impl.cuh"
#include "cuda/sparse_gemm_impl.cuh"

namespace onnxsparse::cuda {

void NoteUntunedOnce(const OrtLogger* logger, const std::string& what) {
  static std::atomic<bool> noted{false};
  if (noted.exchange(true)) return;
  ONNXSPARSE_LOG(logger, ORT_LOGGING_LEVEL_WARNING,
                 StrCat("onnxsparse: ", what, " (and maybe other GEMMs) has no tuned choice in the cuSPARSELt tuning "
                        "cache, so cuSPARSELt's default algorithm and the default choice of kernel serve it; "
                        "`onnxsparse tune --provider cuda` on this model would make it faster (said once)"));
}

PlanPreparer::~PlanPreparer() {
  for (std::thread& thread : threads_) thread.join();
}

#ifndef ONNXSPARSE_WITH_CUSPARSELT

struct SparseLtWeight::Impl {};
struct SparseLtWeight::Plan {};
SparseLtWeight::SparseLtWeight(const RuntimeOptions& options, const OrtLogger* logger)
    : options_(options), logger_(logger) {}
SparseLtWeight::~SparseLtWeight() = default;
Ort::Status SparseLtWeight::Build(const char* op, ElementType, const void*, const uint8_t*, int64_t, int64_t,
                                  const void*, cudaStream_t) {
  std::string why;
  CusparseLtAvailable(options_.cusparselt_library, &why);
  return RuntimeError(op, why);
}
Ort::Status SparseLtWeight::Run(const char*, const void*, int64_t, void*, int64_t, float, cudaStream_t, bool* used) {
  *used = false;
  return Ort::Status{nullptr};
}
Ort::Status SparseLtWeight::Time(const char*, const void*, int64_t, void*, int64_t, float, cudaStream_t, float* us) {
  *us = -1.f;
  return Ort::Status{nullptr};
}
void SparseLtWeight::Prepare(const RuntimeOptions&, int, ElementType, int64_t, int64_t, bool, bool, PlanPreparer*) {}
float CachedOwnKernelUs(const RuntimeOptions&, ElementType, int64_t, int64_t, int64_t, int64_t, bool) { return -1.f; }
void StoreOwnKernelUs(const RuntimeOptions&, const OrtLogger*, ElementType, int64_t, int64_t, int64_t, int64_t, bool,
                      float) {}

#else  // ONNXSPARSE_WITH_CUSPARSELT

using cusparselt::Api;
using cusparselt::CacheEntry;
using cusparselt::CacheKey;
using cusparselt::DataType;
using cusparselt::Library;
using cusparselt::Loaded;
using cusparselt::LtError;

namespace {

// The configuration chosen per problem, shared by every weight of the process (the layers of a
// model repeat a few shapes): key (device, dtype, m, n, k, ldy, bias) -> (config id, us).
struct TunedKey {
  int device;
  int type;
  int64_t m, n, k, ldy;
  bool bias;
  bool operator<(const TunedKey& o) const {
    return std::tie(device, type, m, n, k, ldy, bias) < std::tie(o.device, o.type, o.m, o.n, o.k, o.ldy, o.bias);
  }
};
std::mutex& TunedMutex() {
  static auto* mutex = new std::mutex();
  return *mutex;
}
std::map<TunedKey, std::pair<int, float>>& Tuned() {
  static auto* tuned = new std::map<TunedKey, std::pair<int, float>>();
  return *tuned;
}

// Milliseconds since t (the trace lines' step times).
double MsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

// The GPU model of `device`, which a tuning result holds for (whatever the ordinal). Tabs and line
// breaks in the name become spaces: the file separates fields with tabs.
Ort::Status GpuModel(const char* op, int device, CacheKey* key) {
  cudaDeviceProp prop;
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaGetDeviceProperties(&prop, device));
  key->gpu.assign(prop.name, strnlen(prop.name, sizeof(prop.name)));
  std::replace_if(key->gpu.begin(), key->gpu.end(), [](char c) { return c == '\t' || c == '\n' || c == '\r'; }, ' ');
  key->sm_major = prop.major;
  key->sm_minor = prop.minor;
  return Ort::Status{nullptr};
}

// The key of the own kernel's entry for a problem on the current device (cuSPARSELt loaded).
Ort::Status OwnKey(const char* op, ElementType type, int64_t m, int64_t n, int64_t k, int64_t ldy, bool bias,
                   CacheKey* key) {
  int device = 0;
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaGetDevice(&device));
  ONNXSPARSE_RETURN_IF_ERROR(GpuModel(op, device, key));
  key->version = CusparseLtVersion();
  key->type = cusparselt::CacheType(type);
  std::tie(key->m, key->n, key->k, key->ldy) = std::make_tuple(m, n, k, ldy);
  key->bias = bias;
  key->max_id = cusparselt::kOwnKernel;
  return Ort::Status{nullptr};
}

}  // namespace

float CachedOwnKernelUs(const RuntimeOptions& options, ElementType type, int64_t m, int64_t n, int64_t k, int64_t ldy,
                        bool bias) {
  if (options.cusparselt_tune == RuntimeOptions::kTuneOff || !Library().error.empty()) return -1.f;
  CacheKey key;
  if (!OwnKey("onnxsparse", type, m, n, k, ldy, bias, &key).IsOK()) return -1.f;
  std::lock_guard<std::mutex> lock(TunedMutex());
  CacheEntry entry;
  cusparselt::TuningCacheFile& file = cusparselt::TuningCacheFor(cusparselt::CachePath(options.cusparselt_cache));
  return file.Find(key, &entry) ? entry.us : -1.f;
}

void StoreOwnKernelUs(const RuntimeOptions& options, const OrtLogger* logger, ElementType type, int64_t m, int64_t n,
                      int64_t k, int64_t ldy, bool bias, float us) {
  if (options.cusparselt_tune != RuntimeOptions::kTuneSearch || us <= 0.f || !Library().error.empty()) return;
  CacheKey key;
  if (!OwnKey("onnxsparse", type, m, n, k, ldy, bias, &key).IsOK()) return;
  std::lock_guard<std::mutex> lock(TunedMutex());
  cusparselt::TuningCacheFile& file = cusparselt::TuningCacheFor(cusparselt::CachePath(options.cusparselt_cache));
  std::string why;
  static bool warned = false;
  if (!file.Store(key, CacheEntry{cusparselt::kOwnKernel, us}, &why) && !warned) {
    warned = true;
    ONNXSPARSE_LOG(logger, ORT_LOGGING_LEVEL_WARNING,
                   StrCat("onnxsparse: cannot write cuSPARSELt tuning cache ", file.path(), ": ", why));
  }
}

SparseLtWeight::SparseLtWeight(const RuntimeOptions& options, const OrtLogger* logger)
    : options_(options), logger_(logger), impl_(std::make_unique<Impl>()) {}

SparseLtWeight::~SparseLtWeight() {
  plans_.clear();  // a plan no other weight shares goes with this one
  Loaded& lib = Library();
  if (lib.error.empty() && impl_->has_mat_a) lib.api.MatDescriptorDestroy(&impl_->mat_a);
}

void SparseLtWeight::Plan::Clear() {
  Loaded& lib = Library();
  if (lib.error.empty()) {
    if (initialised) lib.api.MatmulPlanDestroy(&plan);
    if (has_alg) lib.api.MatmulAlgSelectionDestroy(&alg);
    if (has_dense) {
      lib.api.MatDescriptorDestroy(&mat_b);
      lib.api.MatDescriptorDestroy(&mat_c);
    }
    if (has_mat_a) lib.api.MatDescriptorDestroy(&mat_a);
  }
  initialised = has_alg = has_dense = has_mat_a = supported = made = prepared = false;
  bias = nullptr;
  config_id = -1;
  best_us = -1.f;
}

void SparseLtWeight::Prepare(const RuntimeOptions& options, int device, ElementType type, int64_t n, int64_t k,
                             bool bias, bool relu, PlanPreparer* preparer) {
  if (options.cusparselt_tune == RuntimeOptions::kTuneOff || !Library().error.empty() || n <= 0 || k <= 0) return;
  CacheKey like;
  if (!GpuModel("onnxsparse", device, &like).IsOK()) return;
  like.version = CusparseLtVersion();
  like.type = cusparselt::CacheType(type);
  like.n = n;
  like.k = k;
  like.bias = bias;
  std::vector<CacheKey> problems;
  {
    std::lock_guard<std::mutex> lock(TunedMutex());
    problems = cusparselt::TuningCacheFor(cusparselt::CachePath(options.cusparselt_cache)).Problems(like);
  }
  static auto* mutex = new std::mutex();
  static auto* scheduled = new std::set<PlanKey>();  // each problem's plan is made ahead once per process
  for (const CacheKey& problem : problems) {
    if (problem.ldy == 0 || (problem.ldy < 0 && problem.m % -problem.ldy != 0)) continue;
    {
      std::lock_guard<std::mutex> lock(*mutex);
      if (!scheduled->insert(PlanKey{device, static_cast<int>(type), problem.m, n, k, problem.ldy, bias, relu, false})
               .second) {
        continue;
      }
    }
    const int64_t m = problem.m, ldy = problem.ldy;
    preparer->Add([options, device, type, n, k, bias, relu, m, ldy] {
      try {
        if (cudaSetDevice(device) != cudaSuccess) return;
        SparseLtWeight ahead(options, nullptr);  // no logger: the session may be gone before it ends
        ahead.PreparePlan(type, n, k, bias, relu, m, ldy);
      } catch (...) {  // out of memory: the first call makes the plan
      }
    });
  }
}

void SparseLtWeight::PreparePlan(ElementType type, int64_t n, int64_t k, bool bias, bool relu, int64_t m,
                                 int64_t ldy) {
  if (!cusparselt::DeviceHandle("onnxsparse", &impl_->handle).IsOK()) return;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return;
  // A device address of the device stands for the bias until a weight calls (Matmul sets the
  // caller's before each call that differs); nothing reads it.
  static auto* mutex = new std::mutex();
  static auto* stand_ins = new std::map<int, void*>();
  void* stand_in = nullptr;
  if (bias) {
    std::lock_guard<std::mutex> lock(*mutex);
    void*& slot = (*stand_ins)[device];
    if (slot == nullptr && cudaMalloc(&slot, 256) != cudaSuccess) slot = nullptr;
    stand_in = slot;
    if (stand_in == nullptr) return;
  }
  type_ = type;
  n_ = n;
  k_ = k;
  bias_ = stand_in;
  plain_relu_ = relu_ = relu;
  std::shared_ptr<Plan> plan = SharedPlan(KeyFor(device, m, ldy));
  std::unique_lock<std::mutex> lock(plan->mutex, std::try_to_lock);
  if (!lock.owns_lock() || plan->made) return;  // a first call is making it, or made it
  Ort::Status made = MakePlan("onnxsparse", m, ldy, nullptr, nullptr, 1.f, nullptr, false, true, plan.get());
  if (made.IsOK() && plan->supported) {
    plan->made = plan->prepared = true;
  } else {
    plan->Clear();  // the first call makes it, and says why it cannot
  }
}

std::shared_ptr<SparseLtWeight::Plan> SparseLtWeight::SharedPlan(const PlanKey& key) {
  // Kept for the process (a later session of the same model finds them made); never destroyed,
  // since cuSPARSELt may be gone when static objects are.
  static auto* mutex = new std::mutex();
  static auto* plans = new std::map<PlanKey, std::shared_ptr<Plan>>();
  std::lock_guard<std::mutex> lock(*mutex);
  std::shared_ptr<Plan>& slot = (*plans)[key];
  if (!slot) slot = std::make_shared<Plan>();
  return slot;
}

Ort::Status SparseLtWeight::Build(const char* op, ElementType type, const void* values, const uint8_t* index,
                                  int64_t n, int64_t k, const void* bias, cudaStream_t stream) {
  const auto start = std::chrono::steady_clock::now();
  ready_ = false;
  ONNXSPARSE_RETURN_IF_ERROR(cusparselt::DeviceHandle(op, &impl_->handle));
  const Api& a = Library().api;
  type_ = type;
  n_ = n;
  k_ = k;
  bias_ = bias;
  LT_RETURN_IF_ERROR(op, a.StructuredDescriptorInit(impl_->handle, &impl_->mat_a, n, k, k, 16, DataType(type),
                                                    CUSPARSE_ORDER_ROW, CUSPARSELT_SPARSITY_50_PERCENT));
  impl_->has_mat_a = true;
  size_t compressed_bytes = 0, buffer_bytes = 0;
  LT_RETURN_IF_ERROR(op, a.CompressedSize2(impl_->handle, &impl_->mat_a, &compressed_bytes, &buffer_bytes));
  DeviceBuffer dense, buffer;
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, dense.Allocate(static_cast<size_t>(n * k * 2)));
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, buffer.Allocate(buffer_bytes));
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, compressed_.Allocate(compressed_bytes));
  if (cusparselt::IsInt8(type)) {
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchDecompressInt8(static_cast<const int8_t*>(values), index, n, k,
                                                             dense.as<int8_t>(), stream));
  } else if (type == ElementType::kFloat16) {
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchDecompress<__half>(static_cast<const __half*>(values), index, n, k,
                                                                 dense.as<__half>(), stream));
  } else {
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(
        op, LaunchDecompress<__nv_bfloat16>(static_cast<const __nv_bfloat16*>(values), index, n, k,
                                            dense.as<__nv_bfloat16>(), stream));
  }
  LT_RETURN_IF_ERROR(op, a.Compress2(impl_->handle, &impl_->mat_a, 1, CUSPARSE_OPERATION_NON_TRANSPOSE, dense.get(),
                                     compressed_.get(), buffer.get(), stream));
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaStreamSynchronize(stream));  // before the temporaries go
  ready_ = true;
  const OrtLoggingLevel trace = TraceLevel();
  if (LogEnabled(logger_, trace)) {
    char text[160];
    std::snprintf(text, sizeof(text), "onnxsparse trace: cuSPARSELt weight n=%lld k=%lld compressed in %.2f ms",
                  static_cast<long long>(n), static_cast<long long>(k), MsSince(start));
    ONNXSPARSE_LOG(logger_, trace, text);
  }
  return Ort::Status{nullptr};
}

Ort::Status SparseLtWeight::GetPlan(const char* op, int64_t m, int64_t ldy, const void* x, void* y, float alpha,
                                    cudaStream_t stream, Plan** out) {
  auto key = std::make_pair(m, ldy);
  auto it = plans_.find(key);
  if (it != plans_.end()) {
    *out = it->second.get();
    return Ort::Status{nullptr};
  }
  const auto start = std::chrono::steady_clock::now();
  int device = 0;
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaGetDevice(&device));
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaStreamIsCapturing(stream, &capture));
  const bool capturing = capture != cudaStreamCaptureStatusNone;
  const TunedKey tuned_key{device, static_cast<int>(type_), m, n_, k_, ldy, bias_ != nullptr};
  std::shared_ptr<Plan> plan = SharedPlan(KeyFor(device, m, ldy));
  std::unique_lock<std::mutex> lock(plan->mutex);
  const bool made_before = plan->made;
  if (!made_before) {
    bool known = false;
    {
      std::lock_guard<std::mutex> tuned_lock(TunedMutex());
      known = Tuned().count(tuned_key) != 0;
    }
    if (capturing && !known) {
      // Made during a CUDA-graph capture, without the cache or a timing: this weight's own, so
      // that a plan made later, outside a capture, serves the other weights.
      lock.unlock();
      plan = std::make_shared<Plan>();
      lock = std::unique_lock<std::mutex>(plan->mutex);
    }
    Ort::Status made = MakePlan(op, m, ldy, x, y, alpha, stream, capturing, false, plan.get());
    plan->made = true;  // a failed one is not tried again: the own kernel serves the later calls
    if (!made.IsOK()) {
      plans_[key] = plan;
      return made;
    }
  }
  if (plan->supported) {
    // This weight's workspace (the plan's size), and the plan's time when it has none yet.
    const Api& a = Library().api;
    size_t workspace_bytes = 0;
    LT_RETURN_IF_ERROR(op, a.MatmulGetWorkspace(impl_->handle, &plan->plan, &workspace_bytes));
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, GrowWorkspace(workspace_bytes));  // only at the first call of an M
    if (!capturing && plan->best_us < 0.f) {
      ONNXSPARSE_RETURN_IF_ERROR(SetBiasLocked(op, plan.get()));
      plan->best_us =
          cusparselt::TimeMatmul(impl_->handle, &plan->plan, compressed_.get(), x, y, Workspace(), AlphaArg(alpha), stream);
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaGetLastError());
      if (plan->best_us > 0.f) {
        std::lock_guard<std::mutex> tuned_lock(TunedMutex());
        auto& tuned = Tuned()[tuned_key];
        if (tuned.second < 0.f) tuned = {plan->config_id, plan->best_us};
      }
    }
  }
  plans_[key] = plan;
  *out = plan.get();
  const OrtLoggingLevel trace = TraceLevel();
  if (LogEnabled(logger_, trace)) {
    char text[200];
    std::snprintf(text, sizeof(text), "onnxsparse trace: cuSPARSELt m=%lld n=%lld k=%lld: %s plan of config %d in %.2f ms",
                  static_cast<long long>(m), static_cast<long long>(n_), static_cast<long long>(k_),
                  !plan->supported ? "no" : !made_before ? "new" : plan->prepared ? "prepared" : "shared",
                  plan->config_id, MsSince(start));
    ONNXSPARSE_LOG(logger_, trace, text);
  }
  return Ort::Status{nullptr};
}

Ort::Status SparseLtWeight::MakePlan(const char* op, int64_t m, int64_t ldy, const void* x, void* y, float alpha,
                                     cudaStream_t stream, bool capturing, bool prepare, Plan* plan) {
  const auto start = std::chrono::steady_clock::now();
  double max_id_ms = 0.0, plan_ms = 0.0;  // the trace's steps
  Plan& p = *plan;
  const Api& a = Library().api;
  const cusparseLtHandle_t* h = impl_->handle;
  const cudaDataType dt = DataType(type_);
  // A shape cuSPARSELt rejects is remembered as unsupported (the own kernel runs it); what was
  // described goes with the plan (~Plan).
  if (ldy < 0) {  // Conv's per-image form (RunBatched, cusparselt/batched.cc): m = batches * columns, ldy = -columns
    if (!DescribeBatched(m / -ldy, -ldy, &p)) return Ort::Status{nullptr};
  } else {
    if (a.StructuredDescriptorInit(h, &p.mat_a, n_, k_, k_, 16, dt, CUSPARSE_ORDER_ROW,
                                   CUSPARSELT_SPARSITY_50_PERCENT) != CUSPARSE_STATUS_SUCCESS) {
      return Ort::Status{nullptr};
    }
    p.has_mat_a = true;
    if (a.DenseDescriptorInit(h, &p.mat_b, m, k_, k_, 16, dt, CUSPARSE_ORDER_ROW) != CUSPARSE_STATUS_SUCCESS) {
      return Ort::Status{nullptr};
    }
    if (a.DenseDescriptorInit(h, &p.mat_c, n_, m, ldy, 16, cusparselt::OutputDataType(type_), CUSPARSE_ORDER_COL) !=
        CUSPARSE_STATUS_SUCCESS) {
      a.MatDescriptorDestroy(&p.mat_b);
      return Ort::Status{nullptr};
    }
    p.has_dense = true;
    if (a.MatmulDescriptorInit(h, &p.matmul, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_TRANSPOSE,
                               &p.mat_a, &p.mat_b, &p.mat_c, &p.mat_c, cusparselt::ComputeType(type_)) !=
        CUSPARSE_STATUS_SUCCESS) {
      return Ort::Status{nullptr};
    }
  }
  if (alpha_vector_ != nullptr) {
    const int on = 1;
    if (a.MatmulDescSetAttribute(h, &p.matmul, CUSPARSELT_MATMUL_ALPHA_VECTOR_SCALING, &on, sizeof(on)) !=
        CUSPARSE_STATUS_SUCCESS) {
      return Ort::Status{nullptr};  // this cuSPARSELt does not scale this problem per row: the caller's other path
    }
  }
  if (plain_relu_ && ldy >= 0) {
    const int on = 1;
    LT_RETURN_IF_ERROR(op, a.MatmulDescSetAttribute(h, &p.matmul, CUSPARSELT_MATMUL_ACTIVATION_RELU, &on, sizeof(on)));
  }
  if (bias_ != nullptr) {
    const void* bias = bias_;
    LT_RETURN_IF_ERROR(op, a.MatmulDescSetAttribute(h, &p.matmul, CUSPARSELT_MATMUL_BIAS_POINTER, &bias, sizeof(bias)));
    p.bias = bias_;
  }
  // The algorithm: cuSPARSELt's default (heuristic) one measured 0.48-0.62x of dense on an H200
  // at M >= 256 (it picks configuration 0), its best configuration 1.04-1.46x. So at the first
  // call of an M (never during a CUDA-graph capture) every configuration id known to be safe is
  // timed with events and the fastest kept; the choice is shared by all weights of this problem,
  // and kept in the tuning cache file, where a later process finds it and makes only its plan.
  int device = 0;
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaGetDevice(&device));
  const TunedKey tuned_key{device, static_cast<int>(type_), m, n_, k_, ldy, bias_ != nullptr};
  bool known = false;
  {
    std::lock_guard<std::mutex> lock(TunedMutex());
    auto it = Tuned().find(tuned_key);
    if (it != Tuned().end()) {
      known = true;
      p.config_id = it->second.first;
      p.best_us = it->second.second;
    }
  }
  CacheKey cache_key;
  CacheEntry cached;
  bool from_cache = false, tuned_now = false;
  const OrtLoggingLevel trace = TraceLevel();
  cusparselt::TuningCacheFile* cache_file = nullptr;
  bool untuned = false;   // no configuration in the cache, none searched (kTuneCache)
  bool borrowed = false;  // untuned, running the nearest tuned problem's configuration
  if (!known && !capturing && options_.cusparselt_tune != RuntimeOptions::kTuneOff) {
    cache_key.version = a.version;
    cache_key.type = cusparselt::CacheType(type_);
    std::tie(cache_key.m, cache_key.n, cache_key.k, cache_key.ldy) = std::make_tuple(m, n_, k_, ldy);
    cache_key.bias = bias_ != nullptr;
    ONNXSPARSE_RETURN_IF_ERROR(GpuModel(op, device, &cache_key));
    // The selection the plan will use tells the highest configuration id (a key of the cache).
    const auto max_id_start = std::chrono::steady_clock::now();
    LT_RETURN_IF_ERROR(op, a.MatmulAlgSelectionInit(h, &p.alg, &p.matmul, CUSPARSELT_MATMUL_ALG_DEFAULT));
    p.has_alg = true;
    ONNXSPARSE_RETURN_IF_ERROR(cusparselt::SearchedMaxConfigId(op, h, &p.alg, cache_key.sm_major, options_,
                                                               logger_, &cache_key.max_id));
    max_id_ms = MsSince(max_id_start);
    {
      std::lock_guard<std::mutex> lock(TunedMutex());
      cache_file = &cusparselt::TuningCacheFor(cusparselt::CachePath(options_.cusparselt_cache));
      from_cache = cache_file->Find(cache_key, &cached);
    }
    // The cached time is the tuned measurement the runner compares with the own kernel's (also
    // cached); the search runs only when asked (onnxsparse.cusparselt.tune=search: onnxsparse tune).
    if (from_cache) {
      p.config_id = cached.config_id;
      p.best_us = cached.us;
    } else if (prepare) {
      return Ort::Status{nullptr};  // not tuned: the first call chooses
    } else if (options_.cusparselt_tune == RuntimeOptions::kTuneSearch) {
      ONNXSPARSE_RETURN_IF_ERROR(TimeConfigs(op, cache_key.max_id, m, x, y, alpha, stream, &p));
      tuned_now = true;
    } else {
      untuned = cache_key.max_id >= 0;  // with no range to search, tuning would not change the choice
      // Not cuSPARSELt's default algorithm (measured 0.24-0.64x of dense at M >= 128 on an H200)
      // but the configuration of the most similar tuned problem; timed below at this M, and
      // cuSPARSELt's default when this build refuses it.
      CacheKey near_key;
      CacheEntry near;
      std::lock_guard<std::mutex> lock(TunedMutex());
      if (untuned && cache_file->FindNearest(cache_key, &near_key, &near)) {
        p.config_id = near.config_id;
        borrowed = true;
        ONNXSPARSE_LOG(logger_, trace,
                       StrCat("onnxsparse trace: cuSPARSELt m=", m, " n=", n_, " k=", k_, ": untuned, config ",
                              near.config_id, " of the nearest tuned problem m=", near_key.m, " n=", near_key.n,
                              " k=", near_key.k));
      }
    }
  }
  if (prepare && !known && !from_cache) return Ort::Status{nullptr};  // (tuning off, or capturing)
  if (untuned) NoteUntunedOnce(logger_, StrCat("cuSPARSELt M=", m, " N=", n_, " K=", k_));
  const auto plan_start = std::chrono::steady_clock::now();
  Ort::Status planned = InitPlan(op, &p);
  plan_ms = MsSince(plan_start);
  if (!planned.IsOK() && prepare) return Ort::Status{nullptr};  // the first call retries, or searches
  if (!planned.IsOK() && (from_cache || borrowed)) {
    // A cached id that this cuSPARSELt build refuses (the file came from another build): searched
    // again when searching, else cuSPARSELt's default algorithm.
    const bool search = options_.cusparselt_tune == RuntimeOptions::kTuneSearch;
    ONNXSPARSE_LOG(logger_, trace,
                   StrCat("onnxsparse trace: cuSPARSELt m=", m, " n=", n_, " k=", k_, ": cached config ", p.config_id,
                          " refused (", planned.GetErrorMessage(), ")", search ? "" : "; default algorithm"));
    from_cache = borrowed = false;
    p.config_id = -1;
    p.best_us = -1.f;
    if (search) {
      ONNXSPARSE_RETURN_IF_ERROR(TimeConfigs(op, cache_key.max_id, m, x, y, alpha, stream, &p));
      tuned_now = true;
    }
    planned = InitPlan(op, &p);
  }
  if (!planned.IsOK()) return planned;
  if (from_cache && LogEnabled(logger_, trace)) {
    char us[32];
    std::snprintf(us, sizeof(us), "%.2f", cached.us);
    ONNXSPARSE_LOG(logger_, trace,
                   StrCat("onnxsparse trace: cuSPARSELt m=", m, " n=", n_, " k=", k_, ": config ", p.config_id,
                          " from cache ", cache_file->path(), " (", us, " us when tuned)"));
  }
  if (!known && !capturing) {  // an unmeasured choice (best_us -1) gets its time from GetPlan
    std::lock_guard<std::mutex> lock(TunedMutex());
    Tuned()[tuned_key] = {p.config_id, p.best_us};
    if (tuned_now && p.config_id >= 0 && cache_file != nullptr) {
      // An IO error only warns, once per process: the op still runs, without the file.
      static bool warned = false;
      std::string why;
      if (!cache_file->Store(cache_key, CacheEntry{p.config_id, p.best_us}, &why) && !warned) {
        warned = true;
        ONNXSPARSE_LOG(logger_, ORT_LOGGING_LEVEL_WARNING,
                       StrCat("onnxsparse: cannot write cuSPARSELt tuning cache ", cache_file->path(), ": ", why));
      }
    }
  }
  p.supported = true;
  if (LogEnabled(logger_, trace)) {
    char steps[128];
    std::snprintf(steps, sizeof(steps), "made in %.2f ms (max id %.2f, plan %.2f)", MsSince(start), max_id_ms, plan_ms);
    ONNXSPARSE_LOG(logger_, trace,
                   StrCat("onnxsparse trace: cuSPARSELt m=", m, " n=", n_, " k=", k_, ": config ", p.config_id, " ",
                          steps, " (",
                  known      ? "chosen earlier in this process"
                  : from_cache ? "tuning cache"
                  : tuned_now  ? "searched now"
                  : borrowed   ? "nearest tuned problem"
                               : "default algorithm",
                          ")"));
  }
  return Ort::Status{nullptr};
}

// The plan of plan->config_id (-1: cuSPARSELt's default algorithm), with the selection made for the
// configuration range when there is one; on failure the selection is gone too (a retry makes a new one).
Ort::Status SparseLtWeight::InitPlan(const char* op, Plan* plan) {
  const Api& a = Library().api;
  const cusparseLtHandle_t* h = impl_->handle;
  if (!plan->has_alg) {
    LT_RETURN_IF_ERROR(op, a.MatmulAlgSelectionInit(h, &plan->alg, &plan->matmul, CUSPARSELT_MATMUL_ALG_DEFAULT));
    plan->has_alg = true;
  }
  cusparseStatus_t status = CUSPARSE_STATUS_SUCCESS;
  if (plan->config_id >= 0) {
    status = a.MatmulAlgSetAttribute(h, &plan->alg, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &plan->config_id,
                                     sizeof(plan->config_id));
  }
  if (status == CUSPARSE_STATUS_SUCCESS) status = a.MatmulPlanInit(h, &plan->plan, &plan->matmul, &plan->alg);
  if (status != CUSPARSE_STATUS_SUCCESS) {
    a.MatmulAlgSelectionDestroy(&plan->alg);
    plan->has_alg = false;
    return RuntimeError(op, StrCat("cuSPARSELt plan of configuration ", plan->config_id, ": ", LtError(status)));
  }
  plan->initialised = true;
  return Ort::Status{nullptr};
}

// A larger workspace is a new buffer; the old ones stay alive, since a CUDA graph captured for
// another M may still point at them.
cudaError_t SparseLtWeight::GrowWorkspace(size_t bytes) {
  if (bytes == 0 || (!workspaces_.empty() && workspaces_.back()->bytes() >= bytes)) return cudaSuccess;
  auto buffer = std::make_unique<DeviceBuffer>();
  const cudaError_t err = buffer->Allocate(bytes);
  if (err == cudaSuccess) workspaces_.push_back(std::move(buffer));
  return err;
}

void* SparseLtWeight::Workspace() const { return workspaces_.empty() ? nullptr : workspaces_.back()->get(); }

bool SparseLtWeight::Takes(const void* x, int64_t m, const void* y, int64_t ldy) const {
  // 16-byte rows of Y: 8 elements of fp16/bf16 (int32: 32 bytes), 16 of an int8 output.
  const int64_t row_align = type_ == ElementType::kInt8Scaled ? 16 : type_ == ElementType::kInt8ScaledFloat ? 4 : 8;
  return ready_ && m > 0 && m % kMAlign == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(y) % 16 == 0 && ldy % row_align == 0;
}


Ort::Status SparseLtWeight::Run(const char* op, const void* x, int64_t m, void* y, int64_t ldy, float alpha,
                                cudaStream_t stream, bool* used) {
  *used = false;
  if (!Takes(x, m, y, ldy)) return Ort::Status{nullptr};
  std::lock_guard<std::mutex> lock(mutex_);
  Plan* plan = nullptr;
  ONNXSPARSE_RETURN_IF_ERROR(GetPlan(op, m, ldy, x, y, alpha, stream, &plan));
  if (!plan->supported) return Ort::Status{nullptr};
  ONNXSPARSE_RETURN_IF_ERROR(Matmul(op, plan, AlphaArg(alpha), x, y, stream));
  *used = true;
  return Ort::Status{nullptr};
}

Ort::Status SparseLtWeight::SetBiasLocked(const char* op, Plan* plan) {
  if (bias_ == nullptr || plan->bias == bias_) return Ort::Status{nullptr};
  LT_RETURN_IF_ERROR(op, Library().api.MatmulDescSetAttribute(impl_->handle, &plan->matmul,
                                                              CUSPARSELT_MATMUL_BIAS_POINTER, &bias_, sizeof(bias_)));
  plan->bias = bias_;
  return Ort::Status{nullptr};
}

Ort::Status SparseLtWeight::Matmul(const char* op, Plan* plan, const void* alpha, const void* x, void* y,
                                   cudaStream_t stream) {
  const Api& a = Library().api;
  std::lock_guard<std::mutex> lock(plan->mutex);
  ONNXSPARSE_RETURN_IF_ERROR(SetBiasLocked(op, plan));
  const float beta = 0.f;
  cudaStream_t streams[1] = {stream};
  LT_RETURN_IF_ERROR(op, a.Matmul(impl_->handle, &plan->plan, alpha, compressed_.get(), x, &beta, y, y, Workspace(),
                                  streams, 1));
  return Ort::Status{nullptr};
}

#endif  // ONNXSPARSE_WITH_CUSPARSELT

}  // namespace onnxsparse::cuda
