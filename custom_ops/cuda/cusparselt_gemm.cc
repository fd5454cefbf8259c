#include "cuda/cusparselt_gemm.h"

#include <dlfcn.h>
#include <link.h>

#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <tuple>
#include <vector>

#include "cuda/sparse_gemm_impl.cuh"

#ifdef ONNXSPARSE_WITH_CUSPARSELT
#include <cusparseLt.h>
#endif

namespace onnxsparse::cuda {

#ifndef ONNXSPARSE_WITH_CUSPARSELT

bool CusparseLtAvailable(std::string* why) {
  *why = "this onnxsparse library was built without the cuSPARSELt header (see cmake/Cuda.cmake)";
  return false;
}
int CusparseLtVersion() { return 0; }
struct SparseLtWeight::Impl {};
struct SparseLtWeight::Plan {};
SparseLtWeight::SparseLtWeight() = default;
SparseLtWeight::~SparseLtWeight() = default;
Ort::Status SparseLtWeight::Build(const char* op, ElementType, const void*, const uint8_t*, int64_t, int64_t,
                                  const void*, cudaStream_t) {
  std::string why;
  CusparseLtAvailable(&why);
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

#else  // ONNXSPARSE_WITH_CUSPARSELT

namespace {

// The entry points this library calls, resolved with dlsym.
struct Api {
  int version = 0;
  decltype(&cusparseLtInit) Init = nullptr;
  decltype(&cusparseLtGetErrorString) GetErrorString = nullptr;
  decltype(&cusparseLtGetVersion) GetVersion = nullptr;
  decltype(&cusparseLtDenseDescriptorInit) DenseDescriptorInit = nullptr;
  decltype(&cusparseLtStructuredDescriptorInit) StructuredDescriptorInit = nullptr;
  decltype(&cusparseLtMatDescriptorDestroy) MatDescriptorDestroy = nullptr;
  decltype(&cusparseLtMatmulDescriptorInit) MatmulDescriptorInit = nullptr;
  decltype(&cusparseLtMatmulDescSetAttribute) MatmulDescSetAttribute = nullptr;
  decltype(&cusparseLtMatmulAlgSelectionInit) MatmulAlgSelectionInit = nullptr;
  decltype(&cusparseLtMatmulAlgSelectionDestroy) MatmulAlgSelectionDestroy = nullptr;
  decltype(&cusparseLtMatmulAlgSetAttribute) MatmulAlgSetAttribute = nullptr;
  decltype(&cusparseLtMatmulAlgGetAttribute) MatmulAlgGetAttribute = nullptr;
  decltype(&cusparseLtMatmulPlanInit) MatmulPlanInit = nullptr;
  decltype(&cusparseLtMatmulPlanDestroy) MatmulPlanDestroy = nullptr;
  decltype(&cusparseLtMatmulGetWorkspace) MatmulGetWorkspace = nullptr;
  decltype(&cusparseLtMatmul) Matmul = nullptr;
  decltype(&cusparseLtSpMMACompressedSize2) CompressedSize2 = nullptr;
  decltype(&cusparseLtSpMMACompress2) Compress2 = nullptr;
};

// Candidate paths of the NVIDIA wheel layout next to any already-loaded NVIDIA library
// (onnxruntime.preload_dlls() and torch load cuBLAS/cuDNN from site-packages/nvidia/...).
int CollectNvidiaDirs(struct dl_phdr_info* info, size_t, void* data) {
  auto* dirs = static_cast<std::vector<std::string>*>(data);
  if (info->dlpi_name == nullptr) return 0;
  std::string path(info->dlpi_name);
  const size_t at = path.rfind("/nvidia/");
  if (at != std::string::npos) {
    const std::string root = path.substr(0, at + 8);
    for (const char* sub : {"cusparselt/lib/libcusparseLt.so.0", "cu13/lib/libcusparseLt.so.0"}) {
      dirs->push_back(root + sub);
    }
  }
  return 0;
}

void* OpenLibrary(std::string* tried) {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("ONNXSPARSE_CUSPARSELT_LIBRARY"); env != nullptr && *env) candidates.push_back(env);
  candidates.push_back("libcusparseLt.so.0");
  dl_iterate_phdr(CollectNvidiaDirs, &candidates);
  for (const std::string& path : candidates) {
    if (void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) return handle;
    *tried += (tried->empty() ? "" : ", ") + path;
  }
  return nullptr;
}

struct Loaded {
  Api api;
  std::string error;  // empty when loaded
  std::mutex mutex;
  std::map<int, std::unique_ptr<cusparseLtHandle_t>> handles;  // one per device
};

Loaded& Library() {
  static Loaded* loaded = [] {
    auto* l = new Loaded();  // lives as long as the process, like the dlopen'ed library
    std::string tried;
    void* lib = OpenLibrary(&tried);
    if (lib == nullptr) {
      l->error = "cuSPARSELt (libcusparseLt.so.0) could not be loaded (tried " + tried +
                 "); install nvidia-cusparselt-cu13 or set ONNXSPARSE_CUSPARSELT_LIBRARY";
      return l;
    }
    bool ok = true;
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      if (fn == nullptr) {
        ok = false;
        l->error += std::string(l->error.empty() ? "cuSPARSELt lacks " : ", ") + name;
      }
    };
    Api& a = l->api;
    sym(a.Init, "cusparseLtInit");
    sym(a.GetErrorString, "cusparseLtGetErrorString");
    sym(a.GetVersion, "cusparseLtGetVersion");
    sym(a.DenseDescriptorInit, "cusparseLtDenseDescriptorInit");
    sym(a.StructuredDescriptorInit, "cusparseLtStructuredDescriptorInit");
    sym(a.MatDescriptorDestroy, "cusparseLtMatDescriptorDestroy");
    sym(a.MatmulDescriptorInit, "cusparseLtMatmulDescriptorInit");
    sym(a.MatmulDescSetAttribute, "cusparseLtMatmulDescSetAttribute");
    sym(a.MatmulAlgSelectionInit, "cusparseLtMatmulAlgSelectionInit");
    sym(a.MatmulAlgSelectionDestroy, "cusparseLtMatmulAlgSelectionDestroy");
    sym(a.MatmulAlgSetAttribute, "cusparseLtMatmulAlgSetAttribute");
    sym(a.MatmulAlgGetAttribute, "cusparseLtMatmulAlgGetAttribute");
    sym(a.MatmulPlanInit, "cusparseLtMatmulPlanInit");
    sym(a.MatmulPlanDestroy, "cusparseLtMatmulPlanDestroy");
    sym(a.MatmulGetWorkspace, "cusparseLtMatmulGetWorkspace");
    sym(a.Matmul, "cusparseLtMatmul");
    sym(a.CompressedSize2, "cusparseLtSpMMACompressedSize2");
    sym(a.Compress2, "cusparseLtSpMMACompress2");
    if (!ok) l->error += " (library too old?)";
    return l;
  }();
  return *loaded;
}

std::string LtError(cusparseStatus_t status) {
  const Api& a = Library().api;
  return std::string("cuSPARSELt error ") + std::to_string(static_cast<int>(status)) +
         (a.GetErrorString ? std::string(" (") + a.GetErrorString(status) + ")" : std::string());
}

#define LT_RETURN_IF_ERROR(op, expr)                                                  \
  do {                                                                                \
    cusparseStatus_t _st = (expr);                                                    \
    if (_st != CUSPARSE_STATUS_SUCCESS) return RuntimeError(op, #expr ": " + LtError(_st)); \
  } while (0)

// The process's cuSPARSELt handle for the current device (created on first use).
Ort::Status DeviceHandle(const char* op, const cusparseLtHandle_t** out) {
  Loaded& lib = Library();
  if (!lib.error.empty()) return RuntimeError(op, lib.error);
  int device = 0;
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(lib.mutex);
  auto& slot = lib.handles[device];
  if (!slot) {
    auto handle = std::make_unique<cusparseLtHandle_t>();
    LT_RETURN_IF_ERROR(op, lib.api.Init(handle.get()));
    if (lib.api.version == 0) lib.api.GetVersion(handle.get(), &lib.api.version);
    slot = std::move(handle);
  }
  *out = slot.get();
  return Ort::Status{nullptr};
}

cudaDataType DataType(ElementType type) { return type == ElementType::kFloat16 ? CUDA_R_16F : CUDA_R_16BF; }

// The highest algorithm configuration id that is safe to run, by cuSPARSELt version and GPU, as
// measured (benchmarks/cuda/probe.py cslt runs every id in a child process): on an H200 (sm_90)
// with cuSPARSELt 0.8.0, ids 36..51 stop the CUDA context with error 715 (illegal instruction) in
// every shape tried, ids 0..35 run correctly. -1: not measured, so only cuSPARSELt's default
// algorithm is used (ONNXSPARSE_CUSPARSELT_MAX_CONFIG_ID opts in to timing ids 0..N).
int SafeMaxConfigId(int version, int sm_major) {
  const int env = EnvInt("ONNXSPARSE_CUSPARSELT_MAX_CONFIG_ID", -2);
  if (env != -2) return env;
  if (version / 100 == 8 && sm_major == 9) return 35;
  return -1;
}

// Microseconds per cusparseLtMatmul call of `plan` (the fastest of two passes of 5 calls; one
// pass when it takes over 5 ms), -1 on any error.
float TimeMatmul(const cusparseLtHandle_t* h, const cusparseLtMatmulPlan_t* plan, const void* a, const void* x,
                 void* y, void* workspace, float alpha, cudaStream_t stream) {
  const Api& api = Library().api;
  const float beta = 0.f;
  cudaStream_t streams[1] = {stream};
  return TimeOnStream(
      stream, 5,
      [&] { return api.Matmul(h, plan, &alpha, a, x, &beta, y, y, workspace, streams, 1) == CUSPARSE_STATUS_SUCCESS; },
      2, 5.f);
}

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

}  // namespace

bool CusparseLtAvailable(std::string* why) {
  Loaded& lib = Library();
  *why = lib.error;
  return lib.error.empty();
}

int CusparseLtVersion() {
  Loaded& lib = Library();
  if (!lib.error.empty()) return 0;
  if (lib.api.version == 0) {
    const cusparseLtHandle_t* h = nullptr;
    Ort::Status ignored = DeviceHandle("cuSPARSELt", &h);
    (void)ignored;
  }
  return lib.api.version;
}

// D[n, m] = A[n, k] * op(B)[k, m]: A the structured weight, row-major [n, k] (SPEC's rows decoded),
// opA = N; B = X, row-major [m, k], opB = T; D column-major [n, m] with ld = ldy, i.e. row-major
// Y[m, ldy] (the layout PyTorch's semi-structured linear uses with cuSPARSELt).
struct SparseLtWeight::Impl {
  const cusparseLtHandle_t* handle = nullptr;
  cusparseLtMatDescriptor_t mat_a;
  bool has_mat_a = false;
};

struct SparseLtWeight::Plan {
  cusparseLtMatDescriptor_t mat_b, mat_c;
  cusparseLtMatmulDescriptor_t matmul;
  cusparseLtMatmulAlgSelection_t alg;
  cusparseLtMatmulPlan_t plan;
  bool supported = false;
  bool initialised = false;
  int config_id = -1;      // the algorithm configuration chosen (-1: cuSPARSELt's default)
  float best_us = -1.f;    // its measured time per call (-1: not measured, e.g. chosen during capture)
};

SparseLtWeight::SparseLtWeight() : impl_(std::make_unique<Impl>()) {}

SparseLtWeight::~SparseLtWeight() {
  Loaded& lib = Library();
  if (!lib.error.empty()) return;
  for (auto& entry : plans_) {
    Plan& p = *entry.second;
    if (!p.initialised) continue;
    lib.api.MatmulPlanDestroy(&p.plan);
    lib.api.MatmulAlgSelectionDestroy(&p.alg);
    lib.api.MatDescriptorDestroy(&p.mat_b);
    lib.api.MatDescriptorDestroy(&p.mat_c);
  }
  if (impl_->has_mat_a) lib.api.MatDescriptorDestroy(&impl_->mat_a);
}

Ort::Status SparseLtWeight::Build(const char* op, ElementType type, const void* values, const uint8_t* index,
                                  int64_t n, int64_t k, const void* bias, cudaStream_t stream) {
  ready_ = false;
  ONNXSPARSE_RETURN_IF_ERROR(DeviceHandle(op, &impl_->handle));
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
  if (type == ElementType::kFloat16) {
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
  auto owned = std::make_unique<Plan>();
  Plan& p = *owned;
  plans_[key] = std::move(owned);
  *out = &p;
  const Api& a = Library().api;
  const cusparseLtHandle_t* h = impl_->handle;
  const cudaDataType dt = DataType(type_);
  // A shape cuSPARSELt rejects is remembered as unsupported (the own kernel runs it).
  if (a.DenseDescriptorInit(h, &p.mat_b, m, k_, k_, 16, dt, CUSPARSE_ORDER_ROW) != CUSPARSE_STATUS_SUCCESS) {
    return Ort::Status{nullptr};
  }
  if (a.DenseDescriptorInit(h, &p.mat_c, n_, m, ldy, 16, dt, CUSPARSE_ORDER_COL) != CUSPARSE_STATUS_SUCCESS) {
    a.MatDescriptorDestroy(&p.mat_b);
    return Ort::Status{nullptr};
  }
  if (a.MatmulDescriptorInit(h, &p.matmul, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_TRANSPOSE,
                             &impl_->mat_a, &p.mat_b, &p.mat_c, &p.mat_c, CUSPARSE_COMPUTE_32F) !=
      CUSPARSE_STATUS_SUCCESS) {
    a.MatDescriptorDestroy(&p.mat_b);
    a.MatDescriptorDestroy(&p.mat_c);
    return Ort::Status{nullptr};
  }
  if (bias_ != nullptr) {
    const void* bias = bias_;
    LT_RETURN_IF_ERROR(op, a.MatmulDescSetAttribute(h, &p.matmul, CUSPARSELT_MATMUL_BIAS_POINTER, &bias, sizeof(bias)));
  }
  // The algorithm: cuSPARSELt's default (heuristic) one measured 0.48-0.62x of dense on an H200
  // at M >= 256 (it picks configuration 0), its best configuration 1.04-1.46x. So at the first
  // call of an M (never during a CUDA-graph capture) every configuration id known to be safe is
  // timed with events and the fastest kept; the choice is shared by all weights of this problem.
  int device = 0;
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaGetDevice(&device));
  const TunedKey tuned_key{device, static_cast<int>(type_), m, n_, k_, ldy, bias_ != nullptr};
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaStreamIsCapturing(stream, &capture));
  const bool capturing = capture != cudaStreamCaptureStatusNone;
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
  if (!known && !capturing && EnvInt("ONNXSPARSE_CUSPARSELT_TUNE", 1) != 0) {
    int sm_major = 0;
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaDeviceGetAttribute(&sm_major, cudaDevAttrComputeCapabilityMajor, device));
    int max_id = -1;
    {
      cusparseLtMatmulAlgSelection_t probe;
      LT_RETURN_IF_ERROR(op, a.MatmulAlgSelectionInit(h, &probe, &p.matmul, CUSPARSELT_MATMUL_ALG_DEFAULT));
      if (a.MatmulAlgGetAttribute(h, &probe, CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID, &max_id, sizeof(max_id)) !=
          CUSPARSE_STATUS_SUCCESS) {
        max_id = -1;
      }
      a.MatmulAlgSelectionDestroy(&probe);
    }
    max_id = std::min(max_id, SafeMaxConfigId(Library().api.version, sm_major));
    // A selection per id: reusing one selection for every id crashed cuSPARSELt 0.8.0 (H200).
    static const bool trace = EnvInt("ONNXSPARSE_CUDA_TRACE", 0) != 0;
    const auto tune_start = std::chrono::steady_clock::now();
    auto ms_since = [](std::chrono::steady_clock::time_point t) {
      return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
    };
    double plan_ms = 0.0, time_ms = 0.0;
    for (int id = 0; id <= max_id; ++id) {
      auto t0 = std::chrono::steady_clock::now();
      cusparseLtMatmulAlgSelection_t alg;
      if (a.MatmulAlgSelectionInit(h, &alg, &p.matmul, CUSPARSELT_MATMUL_ALG_DEFAULT) != CUSPARSE_STATUS_SUCCESS) break;
      cusparseLtMatmulPlan_t plan;
      if (a.MatmulAlgSetAttribute(h, &alg, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &id, sizeof(id)) == CUSPARSE_STATUS_SUCCESS &&
          a.MatmulPlanInit(h, &plan, &p.matmul, &alg) == CUSPARSE_STATUS_SUCCESS) {
        plan_ms += ms_since(t0);
        size_t bytes = 0;
        if (a.MatmulGetWorkspace(h, &plan, &bytes) == CUSPARSE_STATUS_SUCCESS && GrowWorkspace(bytes) == cudaSuccess) {
          t0 = std::chrono::steady_clock::now();
          const float us = TimeMatmul(h, &plan, compressed_.get(), x, y, Workspace(), alpha, stream);
          time_ms += ms_since(t0);
          if (us > 0.f && (p.best_us < 0.f || us < p.best_us)) {
            p.best_us = us;
            p.config_id = id;
          }
        }
        a.MatmulPlanDestroy(&plan);
      }
      a.MatmulAlgSelectionDestroy(&alg);
    }
    if (trace) {
      std::fprintf(stderr,
                   "onnxsparse trace: cuSPARSELt m=%lld n=%lld k=%lld: ids 0..%d tuned in %.1f ms (plans %.1f, timing %.1f)"
                   " -> config %d, %.2f us\n",
                   static_cast<long long>(m), static_cast<long long>(n_), static_cast<long long>(k_), max_id,
                   ms_since(tune_start), plan_ms, time_ms, p.config_id, p.best_us);
    }
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaGetLastError());
  }
  LT_RETURN_IF_ERROR(op, a.MatmulAlgSelectionInit(h, &p.alg, &p.matmul, CUSPARSELT_MATMUL_ALG_DEFAULT));
  if (p.config_id >= 0) {
    LT_RETURN_IF_ERROR(op, a.MatmulAlgSetAttribute(h, &p.alg, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &p.config_id,
                                                   sizeof(p.config_id)));
  }
  LT_RETURN_IF_ERROR(op, a.MatmulPlanInit(h, &p.plan, &p.matmul, &p.alg));
  p.initialised = true;
  size_t workspace_bytes = 0;
  LT_RETURN_IF_ERROR(op, a.MatmulGetWorkspace(h, &p.plan, &workspace_bytes));
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, GrowWorkspace(workspace_bytes));  // only at the first call of an M
  if (!capturing && p.best_us < 0.f) {
    p.best_us = TimeMatmul(h, &p.plan, compressed_.get(), x, y, Workspace(), alpha, stream);
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaGetLastError());
  }
  if (!known && !capturing) {
    std::lock_guard<std::mutex> lock(TunedMutex());
    Tuned()[tuned_key] = {p.config_id, p.best_us};
  }
  p.supported = true;
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
  return ready_ && m > 0 && m % kMAlign == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(y) % 16 == 0 && ldy % 8 == 0;
}

Ort::Status SparseLtWeight::Time(const char* op, const void* x, int64_t m, void* y, int64_t ldy, float alpha,
                                 cudaStream_t stream, float* us) {
  *us = -1.f;
  if (!Takes(x, m, y, ldy)) return Ort::Status{nullptr};
  std::lock_guard<std::mutex> lock(mutex_);
  Plan* plan = nullptr;
  ONNXSPARSE_RETURN_IF_ERROR(GetPlan(op, m, ldy, x, y, alpha, stream, &plan));
  if (plan->supported) *us = plan->best_us;
  return Ort::Status{nullptr};
}

Ort::Status SparseLtWeight::Run(const char* op, const void* x, int64_t m, void* y, int64_t ldy, float alpha,
                                cudaStream_t stream, bool* used) {
  *used = false;
  if (!Takes(x, m, y, ldy)) return Ort::Status{nullptr};
  std::lock_guard<std::mutex> lock(mutex_);
  Plan* plan = nullptr;
  ONNXSPARSE_RETURN_IF_ERROR(GetPlan(op, m, ldy, x, y, alpha, stream, &plan));
  if (!plan->supported) return Ort::Status{nullptr};
  const float beta = 0.f;
  cudaStream_t streams[1] = {stream};
  LT_RETURN_IF_ERROR(op, Library().api.Matmul(impl_->handle, &plan->plan, &alpha, compressed_.get(), x, &beta, y, y,
                                              Workspace(), streams, 1));
  *used = true;
  return Ort::Status{nullptr};
}

#endif  // ONNXSPARSE_WITH_CUSPARSELT

}  // namespace onnxsparse::cuda
