#include "cuda/sparse_gemm_runner.h"

#include <cstdio>
#include <type_traits>

#include "common/log.h"
#include "common/status.h"
#include "cuda/cuda_utils.h"
#include "cuda/nonfinite_impl.cuh"

namespace onnxsparse::cuda {

void SparseGemmRunner::Init(const OrtKernelInfo* info, size_t values_input, size_t index_input, size_t bias_input) {
  weight_constant_ = InputIsConstant(info, values_input) && InputIsConstant(info, index_input);
  bias_constant_ = InputIsConstant(info, bias_input);
  const KernelContext context = CurrentKernelContext();
  options_ = *context.options;
  device_ = KernelDevice(info);
  logger_ = KernelLogger(info);
}

template <typename T>
Ort::Status SparseGemmRunner::OwnArgsLocked(const char* op, cudaStream_t stream, int slot, const SparseGemmArgs& args,
                                            SparseGemmArgs* own) {
  *own = args;
  own->pdl = options_.cuda_pdl;
  own->weight_constant = weight_constant_;
  if constexpr (!std::is_same_v<T, float>) {
    if (!options_.cuda_pack || !weight_constant_ || !CanPackWeight(args.k, args.values, args.index)) return Ort::Status{nullptr};
    if (static_cast<int>(packed_.size()) <= slot) packed_.resize(slot + 1);
    if (!packed_[slot]) {
      cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaStreamIsCapturing(stream, &capture));
      if (capture != cudaStreamCaptureStatusNone) return Ort::Status{nullptr};  // SPEC's form serves
      auto packed = std::make_unique<DeviceBuffer>();
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, packed->Allocate(PackedWeightBytes(args.n, args.k)));
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchPackWeight<T>(args.values, args.index, args.n, args.k, packed->get(),
                                                              stream));
      packed_[slot] = std::move(packed);
    }
    own->packed = packed_[slot]->get();
  }
  return Ort::Status{nullptr};
}

Ort::Status SparseGemmRunner::ValidateOnce(const char* op, cudaStream_t stream, const uint8_t* index, int64_t rows,
                                           int64_t k) {
  if (!weight_constant_) return Ort::Status{nullptr};  // fed at run time: checking would need a sync per call
  std::lock_guard<std::mutex> lock(mutex_);
  if (validated_) return Ort::Status{nullptr};
  DeviceBuffer count;
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, count.Allocate(sizeof(unsigned int)));
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaMemsetAsync(count.get(), 0, sizeof(unsigned int), stream));
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchCountInvalidNibbles(index, rows, k, count.as<unsigned int>(), stream));
  unsigned int invalid = 0;
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaMemcpyAsync(&invalid, count.get(), sizeof(invalid), cudaMemcpyDeviceToHost, stream));
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaStreamSynchronize(stream));
  if (invalid != 0) {
    return InvalidArgument(op, StrCat("index holds the invalid 2-bit value 3 in ", invalid, " groups"));
  }
  validated_ = true;
  return Ort::Status{nullptr};
}

template <typename T>
Ort::Status SparseGemmRunner::Run(const char* op, cudaStream_t stream, int slot, const SparseGemmArgs& args) {
  SparseGemmArgs rest = args;
  if constexpr (!std::is_same_v<T, float>) {
    const int64_t m_main = args.m / SparseLtWeight::kMAlign * SparseLtWeight::kMAlign;
    const ElementType type = std::is_same_v<T, __half> ? ElementType::kFloat16 : ElementType::kBFloat16;
    const bool lt_bias = bias_constant_ && args.bias != nullptr;
    // Both kernels are candidates wherever both run (a constant weight, M >= 16). The choice per
    // (slot, M), made at its first call: the tuned measurements of both in the tuning cache; else,
    // when searching (onnxsparse.cusparselt.tune=search), both measured now (up to own_timed_m_max)
    // and cached; else the default rule: M <= small_m_max the own kernel (cuSPARSELt not even
    // built), above it cuSPARSELt's plan (cached or default algorithm, never searched) timed against
    // the own kernel up to own_timed_m_max. During a CUDA-graph capture nothing is timed.
    bool use_own = true, decided = false;
    bool wants_lt = false;  // cuSPARSELt takes part: the tuned choice may be it, or the default rule says so
    float own_cached_us = -1.f;
    if (weight_constant_ && m_main > 0) {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = own_is_faster_.find(std::make_pair(slot, args.m));
      if (it != own_is_faster_.end()) {
        decided = true;
        use_own = it->second;
        wants_lt = !use_own;
      }
    }
    std::string why;
    const bool lt_usable = weight_constant_ && m_main > 0 && CusparseLtAvailable(options_.cusparselt_library, &why);
    if (!decided && lt_usable) {
      own_cached_us = CachedOwnKernelUs(options_, type, args.m, args.n, args.k, args.ldy, lt_bias);
      wants_lt = own_cached_us > 0.f || options_.cusparselt_tune == RuntimeOptions::kTuneSearch ||
                 args.m > options_.cuda_small_m_max;
    } else if (!decided && weight_constant_ && args.m > options_.cuda_small_m_max && m_main > 0 &&
               !options_.cuda_allow_no_cusparselt) {
      return RuntimeError(op, StrCat("M=", args.m, " needs cuSPARSELt, which is not usable: ", why,
                                     " (onnxsparse.cuda.allow_no_cusparselt=1 runs the slower own kernel)"));
    }
    SparseLtWeight* weight = nullptr;
    if (wants_lt) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (static_cast<int>(sparselt_.size()) <= slot) {
        sparselt_.resize(slot + 1);
        sparselt_error_.resize(slot + 1);
      }
      if (static_cast<int>(own_ran_.size()) <= slot) own_ran_.resize(slot + 1, false);
      if (!sparselt_[slot] && sparselt_error_[slot].empty()) {
        auto built = std::make_unique<SparseLtWeight>(options_, logger_);
        Ort::Status status = built->Build(op, type, args.values, args.index, args.n, args.k,
                                          lt_bias ? args.bias : nullptr, stream);
        if (status.IsOK()) sparselt_[slot] = std::move(built);
        else sparselt_error_[slot] = status.GetErrorMessage();  // a shape it rejects: own kernel
      }
      weight = sparselt_[slot].get();
    }
    if (!decided && weight != nullptr) {
      std::lock_guard<std::mutex> lock(mutex_);
      cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaStreamIsCapturing(stream, &capture));
      const bool capturing = capture != cudaStreamCaptureStatusNone;
      const bool searching = options_.cusparselt_tune == RuntimeOptions::kTuneSearch;
      const bool timed = own_cached_us > 0.f || args.m <= options_.cuda_own_timed_m_max;
      float lt_us = -1.f, own_us = own_cached_us;
      const char* source = "default rule";
      if (capturing) {
        use_own = args.m <= options_.cuda_small_m_max;  // nothing may be timed now; not remembered
      } else if (timed) {
        // The plan of this M: cached, searched, or the default algorithm (timed, no search).
        ONNXSPARSE_RETURN_IF_ERROR(weight->Time(op, args.x, m_main, args.y, args.ldy, args.alpha, stream, &lt_us));
        if (own_us <= 0.f) {
          SparseGemmArgs own;
          ONNXSPARSE_RETURN_IF_ERROR(OwnArgsLocked<T>(op, stream, slot, args, &own));
          own_us = TimeOnStream(stream, 10, [&] { return LaunchSparseGemm<T>(own, stream) == cudaSuccess; });
          ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaGetLastError());
          StoreOwnKernelUs(options_, logger_, type, args.m, args.n, args.k, args.ldy, lt_bias, own_us);
          source = searching ? "measured now (search)" : "measured now (default algorithm)";
        } else {
          source = "tuning cache";
        }
        use_own = lt_us < 0.f || (own_us > 0.f && own_us <= lt_us);
      } else {
        use_own = args.m <= options_.cuda_small_m_max;  // not timed (above own_timed_m_max): the default rule
      }
      if (!capturing) own_is_faster_[std::make_pair(slot, args.m)] = use_own;
      // A packed weight built only to be timed, and beaten: freed until the own kernel serves.
      if (!use_own && !own_ran_[slot] && static_cast<int>(packed_.size()) > slot) packed_[slot].reset();
      const OrtLoggingLevel level = options_.log_verbose ? ORT_LOGGING_LEVEL_WARNING : ORT_LOGGING_LEVEL_VERBOSE;
      if (LogEnabled(logger_, level)) {
        char text[320];
        std::snprintf(text, sizeof(text),
                      "onnxsparse: %s M=%lld K=%lld N=%lld: cuSPARSELt %.2f us, own kernel %.2f us (%s) -> %s", op,
                      static_cast<long long>(args.m), static_cast<long long>(args.k), static_cast<long long>(args.n),
                      lt_us, own_us, source, use_own ? "own" : "cuSPARSELt");
        ONNXSPARSE_LOG(logger_, level, text);
      }
    } else if (!decided) {
      use_own = true;  // no cuSPARSELt weight (small M untuned, absent, or a shape it rejects)
      if (lt_usable) {
        if (!wants_lt && options_.cusparselt_tune == RuntimeOptions::kTuneCache) {
          NoteUntunedOnce(logger_, StrCat(op, " M=", args.m, " N=", args.n, " K=", args.k));
        }
        std::lock_guard<std::mutex> lock(mutex_);
        own_is_faster_[std::make_pair(slot, args.m)] = true;  // the cache is not asked again for this M
      }
    }
    if (weight != nullptr && !use_own) {
      bool used = false;
      ONNXSPARSE_RETURN_IF_ERROR(weight->Run(op, args.x, m_main, args.y, args.ldy, args.alpha, stream, &used));
      if (used) {
        if (args.bias != nullptr && !bias_constant_) {
          ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchAddBias<T>(static_cast<T*>(args.y), m_main, args.n, args.ldy,
                                                               static_cast<const T*>(args.bias), stream));
        }
        rest.m = args.m - m_main;
        rest.x = static_cast<const T*>(args.x) + m_main * args.k;
        rest.y = static_cast<T*>(args.y) + m_main * args.ldy;
      }
    }
  }
  if (rest.m > 0) {
    SparseGemmArgs own;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (static_cast<int>(own_ran_.size()) <= slot) own_ran_.resize(slot + 1, false);
      own_ran_[slot] = true;
      ONNXSPARSE_RETURN_IF_ERROR(OwnArgsLocked<T>(op, stream, slot, rest, &own));
    }
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchSparseGemm<T>(own, stream));
  }
  return Ort::Status{nullptr};
}

template <typename T>
Ort::Status SparseGemmRunner::PropagateNonFinite(const char* op, cudaStream_t stream, const T* x, int64_t m, int64_t k,
                                                 const uint8_t* index, int64_t n, T* y, int64_t ldy) {
  if (!options_.cuda_nonfinite) return Ort::Status{nullptr};  // off: finite inputs only
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchPropagateNonFinite<T>(x, m, k, index, n, y, ldy, options_.cuda_pdl, stream));
  return Ort::Status{nullptr};
}

template Ort::Status SparseGemmRunner::PropagateNonFinite<float>(const char*, cudaStream_t, const float*, int64_t,
                                                                 int64_t, const uint8_t*, int64_t, float*, int64_t);
template Ort::Status SparseGemmRunner::PropagateNonFinite<__half>(const char*, cudaStream_t, const __half*, int64_t,
                                                                  int64_t, const uint8_t*, int64_t, __half*, int64_t);
template Ort::Status SparseGemmRunner::PropagateNonFinite<__nv_bfloat16>(const char*, cudaStream_t,
                                                                         const __nv_bfloat16*, int64_t, int64_t,
                                                                         const uint8_t*, int64_t, __nv_bfloat16*,
                                                                         int64_t);

template Ort::Status SparseGemmRunner::Run<float>(const char*, cudaStream_t, int, const SparseGemmArgs&);
template Ort::Status SparseGemmRunner::Run<__half>(const char*, cudaStream_t, int, const SparseGemmArgs&);
template Ort::Status SparseGemmRunner::Run<__nv_bfloat16>(const char*, cudaStream_t, int, const SparseGemmArgs&);

}  // namespace onnxsparse::cuda
