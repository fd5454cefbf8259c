// The choice between the own kernel and cuSPARSELt for the GEMMs of one runner (SparseGemmRunner:
// fp16/bf16, QGemmRunner: int8), one rule for both (DEVELOPERS.md). Both kernels are candidates
// wherever both can run (a constant weight, enough rows of M for cuSPARSELt). The choice per
// (slot, M), made at its first call and remembered: the tuning cache's measurements of both; else,
// searching (onnxsparse.cusparselt.tune=search), both measured now (up to own_timed_m_max) and
// cached; else the default rule: M <= onnxsparse.cuda.small_m_max the own kernel (cuSPARSELt not
// even built), above it cuSPARSELt's plan (cached configuration or default algorithm, never
// searched) timed against the own kernel up to onnxsparse.cuda.own_timed_m_max. During a CUDA-graph
// capture nothing is timed and the default rule's answer is not remembered. The choice is logged
// on the session's logger (VERBOSE; WARNING with onnxsparse.log_verbose).
// The runner supplies what differs: how its cuSPARSELt weight is built, and how each candidate is
// timed (the int8 one first shifts its activations, the fp16 one packs its weight).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "common/log.h"
#include "common/ort_api.h"
#include "common/runtime_options.h"
#include "common/status.h"
#include "cuda/cuda_utils.h"
#include "cuda/cusparselt_gemm.h"

namespace onnxsparse::cuda {

// One GEMM as the choice sees it: what keys it (here and in the tuning cache) and what is logged.
struct GemmCall {
  const char* op = "";
  int slot = 0;
  ElementType type = ElementType::kFloat16;
  int64_t m = 0, n = 0, k = 0;
  int64_t ldy = 0;            // the output's row stride, a key of the tuning cache (int8: n)
  bool lt_bias = false;       // cuSPARSELt adds the bias (a key of the tuning cache)
  bool lt_candidate = false;  // cuSPARSELt could serve: a constant weight and rows of M for it
  const char* log_tag = "";   // said after N= in the log line ("" or " int8")
};

class GemmChoice {
 public:
  // What Choose decided: weight is null when cuSPARSELt takes no part; it serves when !use_own.
  struct Result {
    SparseLtWeight* weight = nullptr;
    bool use_own = true;
  };

  // The runner's options and logger (read at its kernel's creation), and the lock that guards the
  // runner's state: Choose holds it around its own state and around every callback.
  void Init(const RuntimeOptions* options, const OrtLogger* logger, std::mutex* mutex) {
    options_ = options;
    logger_ = logger;
    mutex_ = mutex;
  }

  // Chooses for one call. The callbacks, each called with the lock held:
  //   slot_weight() -> SparseLtWeight*: the slot's cuSPARSELt weight, built at its first use (null
  //     when cuSPARSELt refuses the shape: the own kernel serves);
  //   time_lt(weight, float* us) -> Ort::Status: cuSPARSELt's time per call on its rows;
  //   time_own(float* us) -> Ort::Status: the own kernel's time per call on all rows (-1: failed);
  //   chosen(bool use_own): told each choice made with a cuSPARSELt weight at hand (not a
  //     remembered one, nor one made without cuSPARSELt).
  template <typename Weight, typename TimeLt, typename TimeOwn, typename Chosen>
  Ort::Status Choose(cudaStream_t stream, const GemmCall& call, Weight&& slot_weight, TimeLt&& time_lt,
                     TimeOwn&& time_own, Chosen&& chosen, Result* result);

 private:
  const RuntimeOptions* options_ = nullptr;
  const OrtLogger* logger_ = nullptr;
  std::mutex* mutex_ = nullptr;
  std::map<std::pair<int, int64_t>, bool> own_is_faster_;  // by (slot, M): decided at its first call
};

template <typename Weight, typename TimeLt, typename TimeOwn, typename Chosen>
Ort::Status GemmChoice::Choose(cudaStream_t stream, const GemmCall& call, Weight&& slot_weight, TimeLt&& time_lt,
                               TimeOwn&& time_own, Chosen&& chosen, Result* result) {
  const RuntimeOptions& options = *options_;
  const char* op = call.op;
  const std::pair<int, int64_t> key(call.slot, call.m);
  bool use_own = true, decided = false;
  bool wants_lt = false;  // cuSPARSELt takes part: the tuned choice may be it, or the default rule says so
  float own_cached_us = -1.f;
  if (call.lt_candidate) {
    std::lock_guard<std::mutex> lock(*mutex_);
    auto it = own_is_faster_.find(key);
    if (it != own_is_faster_.end()) {
      decided = true;
      use_own = it->second;
      wants_lt = !use_own;
    }
  }
  std::string why;
  const bool lt_usable = call.lt_candidate && CusparseLtAvailable(options.cusparselt_library, &why);
  if (!decided && lt_usable) {
    own_cached_us = CachedOwnKernelUs(options, call.type, call.m, call.n, call.k, call.ldy, call.lt_bias);
    wants_lt = own_cached_us > 0.f || options.cusparselt_tune == RuntimeOptions::kTuneSearch ||
               call.m > options.cuda_small_m_max;
  } else if (!decided && call.lt_candidate && call.m > options.cuda_small_m_max &&
             !options.cuda_allow_no_cusparselt) {
    return RuntimeError(op, StrCat("M=", call.m, " needs cuSPARSELt, which is not usable: ", why,
                                   " (onnxsparse.cuda.allow_no_cusparselt=1 runs the slower own kernel)"));
  }
  SparseLtWeight* weight = nullptr;
  if (wants_lt) {
    std::lock_guard<std::mutex> lock(*mutex_);
    weight = slot_weight();
  }
  if (!decided && weight != nullptr) {
    std::lock_guard<std::mutex> lock(*mutex_);
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaStreamIsCapturing(stream, &capture));
    const bool capturing = capture != cudaStreamCaptureStatusNone;
    const bool searching = options.cusparselt_tune == RuntimeOptions::kTuneSearch;
    const bool timed = own_cached_us > 0.f || call.m <= options.cuda_own_timed_m_max;
    float lt_us = -1.f, own_us = own_cached_us;
    const char* source = "default rule";
    if (capturing) {
      use_own = call.m <= options.cuda_small_m_max;  // nothing may be timed now; not remembered
    } else if (timed) {
      // The plan of this M: cached, searched, or the default algorithm (timed, no search).
      ONNXSPARSE_RETURN_IF_ERROR(time_lt(weight, &lt_us));
      if (own_us <= 0.f) {
        ONNXSPARSE_RETURN_IF_ERROR(time_own(&own_us));
        ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaGetLastError());
        StoreOwnKernelUs(options, logger_, call.type, call.m, call.n, call.k, call.ldy, call.lt_bias, own_us);
        source = searching ? "measured now (search)" : "measured now (default algorithm)";
      } else {
        source = "tuning cache";
      }
      use_own = lt_us < 0.f || (own_us > 0.f && own_us <= lt_us);
    } else {
      use_own = call.m <= options.cuda_small_m_max;  // not timed (above own_timed_m_max): the default rule
    }
    if (!capturing) own_is_faster_[key] = use_own;
    chosen(use_own);
    const OrtLoggingLevel level = options.log_verbose ? ORT_LOGGING_LEVEL_WARNING : ORT_LOGGING_LEVEL_VERBOSE;
    if (LogEnabled(logger_, level)) {
      char text[320];
      std::snprintf(text, sizeof(text),
                    "onnxsparse: %s M=%lld K=%lld N=%lld%s: cuSPARSELt %.2f us, own kernel %.2f us (%s) -> %s", op,
                    static_cast<long long>(call.m), static_cast<long long>(call.k), static_cast<long long>(call.n),
                    call.log_tag, lt_us, own_us, source, use_own ? "own" : "cuSPARSELt");
      ONNXSPARSE_LOG(logger_, level, text);
    }
  } else if (!decided) {
    use_own = true;  // no cuSPARSELt weight (small M untuned, absent, or a shape it refuses)
    if (lt_usable) {
      if (!wants_lt && options.cusparselt_tune == RuntimeOptions::kTuneCache) {
        NoteUntunedOnce(logger_, StrCat(op, " M=", call.m, " N=", call.n, " K=", call.k));
      }
      std::lock_guard<std::mutex> lock(*mutex_);
      own_is_faster_[key] = true;  // the cache is not asked again for this M
    }
  }
  result->weight = weight;
  result->use_own = use_own;
  return Ort::Status{nullptr};
}

}  // namespace onnxsparse::cuda
