// The configuration search of cuSPARSELt: which configuration ids are safe to time (by version and
// GPU), the timing of one plan, and the sweep that picks the fastest for a problem.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>

#include "common/log.h"
#include "common/status.h"
#include "cuda/cusparselt/internal.h"

namespace onnxsparse::cuda {

#ifdef ONNXSPARSE_WITH_CUSPARSELT

namespace cusparselt {

namespace {

// The highest algorithm configuration id that is safe to run, by cuSPARSELt version and GPU, as
// measured (benchmarks/cuda/probe.py cslt runs every id in a child process): on an H200 (sm_90)
// with cuSPARSELt 0.8.0, ids 36..51 stop the CUDA context with error 715 (illegal instruction) in
// every shape tried, ids 0..35 run correctly. With 0.10.0 the ids that stop it differ by shape
// (41 in one, 16 and 34 in another, 26 in a third, none in 8 of 12), so no range is safe there.
// -1: none, so only cuSPARSELt's default algorithm is used (onnxsparse.cusparselt.max_config_id
// opts in to timing ids 0..N).
int SafeMaxConfigId(const RuntimeOptions& options, int version, int sm_major) {
  if (options.cusparselt_max_config_id != RuntimeOptions::kUnsetConfigId) return options.cusparselt_max_config_id;
  if (version / 100 == 8 && sm_major == 9) return 35;
  return -1;
}

}  // namespace

float TimeMatmul(const cusparseLtHandle_t* h, const cusparseLtMatmulPlan_t* plan, const void* a, const void* x,
                 void* y, void* workspace, const void* alpha, cudaStream_t stream) {
  const Api& api = Library().api;
  const float beta = 0.f;
  cudaStream_t streams[1] = {stream};
  return TimeOnStream(
      stream, 5,
      [&] { return api.Matmul(h, plan, alpha, a, x, &beta, y, y, workspace, streams, 1) == CUSPARSE_STATUS_SUCCESS; },
      2, 5.f);
}

Ort::Status SearchedMaxConfigId(const char*, const cusparseLtHandle_t* h, const cusparseLtMatmulAlgSelection_t* alg,
                                int sm_major, const RuntimeOptions& options, const OrtLogger* logger, int* max_id) {
  const Api& a = Library().api;
  *max_id = -1;
  if (a.MatmulAlgGetAttribute(h, alg, CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID, max_id, sizeof(*max_id)) !=
      CUSPARSE_STATUS_SUCCESS) {
    *max_id = -1;
  }
  const int safe = SafeMaxConfigId(options, a.version, sm_major);
  static std::atomic<bool> warned{false};
  if (safe < 0 && options.cusparselt_max_config_id == RuntimeOptions::kUnsetConfigId && !warned.exchange(true)) {
    // Without tuning, cuSPARSELt's default algorithm ran 0.49-0.95x of dense on an H200 (0.8.0 and
    // 0.10.0, M >= 2048): a layer the compiler chose sparse may then be slower than dense.
    ONNXSPARSE_LOG(logger, ORT_LOGGING_LEVEL_WARNING,
                   StrCat("onnxsparse: cuSPARSELt ", a.version / 1000, '.', a.version / 100 % 10, '.', a.version % 100,
                          " on sm_", sm_major * 10,
                          " has no configuration range measured safe to time, so its default algorithm is used, "
                          "which can be slower than dense; cuSPARSELt 0.8.x is measured "
                          "(onnxsparse.cusparselt.max_config_id=N times ids 0..N at the risk of a configuration "
                          "that stops the CUDA context)"));
  }
  *max_id = std::min(*max_id, safe);
  return Ort::Status{nullptr};
}

}  // namespace cusparselt

using cusparselt::Api;
using cusparselt::Library;

// Times every configuration id 0..max_id on this problem; the fastest goes to plan->config_id and
// plan->best_us (left as they are when none runs). A selection per id: reusing one selection for
// every id crashed cuSPARSELt 0.8.0 (H200).
Ort::Status SparseLtWeight::TimeConfigs(const char* op, int max_id, int64_t m, const void* x, void* y, float alpha,
                                        cudaStream_t stream, Plan* plan) {
  const Api& a = Library().api;
  const cusparseLtHandle_t* h = impl_->handle;
  const auto tune_start = std::chrono::steady_clock::now();
  auto ms_since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
  };
  double plan_ms = 0.0, time_ms = 0.0;
  for (int id = 0; id <= max_id; ++id) {
    auto t0 = std::chrono::steady_clock::now();
    cusparseLtMatmulAlgSelection_t alg;
    if (a.MatmulAlgSelectionInit(h, &alg, &plan->matmul, CUSPARSELT_MATMUL_ALG_DEFAULT) != CUSPARSE_STATUS_SUCCESS) break;
    cusparseLtMatmulPlan_t candidate;
    if (a.MatmulAlgSetAttribute(h, &alg, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &id, sizeof(id)) == CUSPARSE_STATUS_SUCCESS &&
        a.MatmulPlanInit(h, &candidate, &plan->matmul, &alg) == CUSPARSE_STATUS_SUCCESS) {
      plan_ms += ms_since(t0);
      size_t bytes = 0;
      if (a.MatmulGetWorkspace(h, &candidate, &bytes) == CUSPARSE_STATUS_SUCCESS && GrowWorkspace(bytes) == cudaSuccess) {
        t0 = std::chrono::steady_clock::now();
        const float us = cusparselt::TimeMatmul(h, &candidate, compressed_.get(), x, y, Workspace(), AlphaArg(alpha), stream);
        time_ms += ms_since(t0);
        if (us > 0.f && (plan->best_us < 0.f || us < plan->best_us)) {
          plan->best_us = us;
          plan->config_id = id;
        }
      }
      a.MatmulPlanDestroy(&candidate);
    }
    a.MatmulAlgSelectionDestroy(&alg);
  }
  const OrtLoggingLevel trace = TraceLevel();
  if (LogEnabled(logger_, trace)) {
    char text[256];
    std::snprintf(text, sizeof(text),
                  "onnxsparse trace: cuSPARSELt m=%lld n=%lld k=%lld: ids 0..%d tuned in %.1f ms (plans %.1f, timing %.1f)"
                  " -> config %d, %.2f us",
                  static_cast<long long>(m), static_cast<long long>(n_), static_cast<long long>(k_), max_id,
                  ms_since(tune_start), plan_ms, time_ms, plan->config_id, plan->best_us);
    ONNXSPARSE_LOG(logger_, trace, text);
  }
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaGetLastError());
  return Ort::Status{nullptr};
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

#endif  // ONNXSPARSE_WITH_CUSPARSELT

}  // namespace onnxsparse::cuda
