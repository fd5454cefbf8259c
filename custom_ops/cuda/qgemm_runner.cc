#include "cuda/qgemm_runner.h"

#include <cstdio>

#include "common/log.h"
#include "common/status.h"
#include "cuda/sparse_gemm_impl.cuh"

namespace onnxsparse::cuda {

namespace {

// Where cuSPARSELt's operands go in the scratch memory: A' (uint8 shifted, or a misaligned int8 A
// copied) [m, k], then the int32 product [m, ldc].
int64_t ProductStride(int64_t n) { return (n + 15) / 16 * 16; }

bool NeedsShift(const QGemmArgs& args) {
  return args.epi.a_unsigned || reinterpret_cast<uintptr_t>(args.x) % 16 != 0;
}

}  // namespace

void QGemmRunner::Init(const OrtKernelInfo* info, size_t values_input, size_t index_input) {
  weight_constant_ = InputIsConstant(info, values_input) && InputIsConstant(info, index_input);
  const KernelContext context = CurrentKernelContext();
  options_ = *context.options;
  device_ = KernelDevice(info);
  logger_ = KernelLogger(info);
}

Ort::Status QGemmRunner::Prepare(const char* op, cudaStream_t stream, const int8_t* values, const uint8_t* index,
                                 int64_t rows, int64_t k, const int32_t** wsum) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (weight_constant_ && !validated_) {
    DeviceBuffer count;
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, count.Allocate(sizeof(unsigned int)));
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaMemsetAsync(count.get(), 0, sizeof(unsigned int), stream));
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchCountInvalidNibbles(index, rows, k, count.as<unsigned int>(), stream));
    unsigned int invalid = 0;
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaMemcpyAsync(&invalid, count.get(), sizeof(invalid), cudaMemcpyDeviceToHost,
                                                        stream));
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaStreamSynchronize(stream));
    if (invalid != 0) {
      return InvalidArgument(op, StrCat("index holds the invalid 2-bit value 3 in ", invalid, " groups"));
    }
    validated_ = true;
  }
  const size_t bytes = sizeof(int32_t) * static_cast<size_t>(rows > 0 ? rows : 1);
  if (wsum_.bytes() < bytes) {
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, wsum_.Allocate(bytes));
    wsum_ready_ = false;
  }
  const size_t terms_scale_at = AlignUp(bytes);
  if (terms_.bytes() < 2 * terms_scale_at) {
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, terms_.Allocate(2 * terms_scale_at));
    terms_scale_at_ = terms_scale_at;
  }
  if (!wsum_ready_) {
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchWeightRowSums(values, index, rows, k, wsum_.as<int32_t>(), stream));
    wsum_ready_ = weight_constant_;  // a weight fed at run time: every call
  }
  *wsum = wsum_.as<int32_t>();
  return Ort::Status{nullptr};
}

size_t QGemmRunner::ScratchBytes(int64_t m, int64_t n, int64_t k) const {
  const int64_t m_main = m / kMAlign * kMAlign;
  if (!weight_constant_ || m_main == 0 || k % 16 != 0) return 0;
  return AlignUp(static_cast<size_t>(m_main * k)) + AlignUp(sizeof(int32_t) * m_main * ProductStride(n));
}

SparseLtWeight* QGemmRunner::WeightLocked(const char* op, cudaStream_t stream, int slot, const QGemmArgs& args) {
  if (static_cast<int>(sparselt_.size()) <= slot) {
    sparselt_.resize(slot + 1);
    sparselt_error_.resize(slot + 1);
  }
  if (!sparselt_[slot] && sparselt_error_[slot].empty()) {
    auto built = std::make_unique<SparseLtWeight>(options_, logger_);
    Ort::Status status =
        built->Build(op, ElementType::kInt8, args.values, args.index, args.n, args.k, nullptr, stream);
    if (status.IsOK()) sparselt_[slot] = std::move(built);
    else sparselt_error_[slot] = status.GetErrorMessage();  // a shape it refuses: the own kernel
    if (!status.IsOK() && LogEnabled(logger_, ORT_LOGGING_LEVEL_VERBOSE)) {
      ONNXSPARSE_LOG(logger_, ORT_LOGGING_LEVEL_VERBOSE,
                     StrCat("onnxsparse: ", op, " N=", args.n, " K=", args.k, ": no cuSPARSELt weight (",
                            sparselt_error_[slot], "); the own kernel serves every M"));
    }
  }
  return sparselt_[slot].get();
}

Ort::Status QGemmRunner::Run(const char* op, cudaStream_t stream, int slot, const QGemmArgs& args, void* scratch) {
  const int64_t m = args.m, n = args.n, k = args.k;
  const int64_t m_main = scratch != nullptr ? m / kMAlign * kMAlign : 0;  // ScratchBytes is 0 when it cannot serve
  const int64_t ldc = ProductStride(n);
  int8_t* shifted = static_cast<int8_t*>(scratch);
  int32_t* product = scratch != nullptr ? reinterpret_cast<int32_t*>(static_cast<char*>(scratch) +
                                                                      AlignUp(static_cast<size_t>(m_main * k)))
                                        : nullptr;
  // cuSPARSELt's B: A' in the scratch memory, or A itself (int8, 16-byte aligned).
  auto lt_input = [&]() -> const void* {
    return NeedsShift(args) ? static_cast<const void*>(shifted) : args.x;
  };
  auto shift = [&]() -> cudaError_t {
    if (!NeedsShift(args)) return cudaSuccess;
    return LaunchShiftActivations(args.x, k, m_main, k, args.epi.a_unsigned, shifted, stream);
  };

  bool use_own = true, decided = false, wants_lt = false;
  float own_cached_us = -1.f;
  if (m_main > 0) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = own_is_faster_.find(std::make_pair(slot, m));
    if (it != own_is_faster_.end()) {
      decided = true;
      use_own = it->second;
      wants_lt = !use_own;
    }
  }
  std::string why;
  const bool lt_usable = m_main > 0 && CusparseLtAvailable(options_.cusparselt_library, &why);
  if (!decided && lt_usable) {
    own_cached_us = CachedOwnKernelUs(options_, ElementType::kInt8, m, n, k, n, false);
    wants_lt = own_cached_us > 0.f || options_.cusparselt_tune == RuntimeOptions::kTuneSearch ||
               m > options_.cuda_small_m_max;
  } else if (!decided && m_main > 0 && m > options_.cuda_small_m_max && !options_.cuda_allow_no_cusparselt) {
    return RuntimeError(op, StrCat("M=", m, " needs cuSPARSELt, which is not usable: ", why,
                                   " (onnxsparse.cuda.allow_no_cusparselt=1 runs the slower own kernel)"));
  }
  SparseLtWeight* weight = nullptr;
  if (wants_lt) {
    std::lock_guard<std::mutex> lock(mutex_);
    weight = WeightLocked(op, stream, slot, args);
  }
  if (!decided && weight != nullptr) {
    std::lock_guard<std::mutex> lock(mutex_);
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaStreamIsCapturing(stream, &capture));
    const bool capturing = capture != cudaStreamCaptureStatusNone;
    const bool searching = options_.cusparselt_tune == RuntimeOptions::kTuneSearch;
    float lt_us = -1.f, own_us = own_cached_us;
    const char* source = "default rule";
    if (capturing) {
      use_own = m <= options_.cuda_small_m_max;  // nothing may be timed now; not remembered
    } else if (own_cached_us > 0.f || m <= options_.cuda_own_timed_m_max) {
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, shift());
      ONNXSPARSE_RETURN_IF_ERROR(weight->Time(op, lt_input(), m_main, product, ldc, 1.0f, stream, &lt_us));
      if (own_us <= 0.f) {
        own_us = TimeOnStream(stream, 10, [&] { return LaunchQGemmOwn(args, stream) == cudaSuccess; });
        ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaGetLastError());
        StoreOwnKernelUs(options_, logger_, ElementType::kInt8, m, n, k, n, false, own_us);
        source = searching ? "measured now (search)" : "measured now (default algorithm)";
      } else {
        source = "tuning cache";
      }
      use_own = lt_us < 0.f || (own_us > 0.f && own_us <= lt_us);
    } else {
      use_own = m <= options_.cuda_small_m_max;  // not timed (above own_timed_m_max): the default rule
    }
    if (!capturing) own_is_faster_[std::make_pair(slot, m)] = use_own;
    const OrtLoggingLevel level = options_.log_verbose ? ORT_LOGGING_LEVEL_WARNING : ORT_LOGGING_LEVEL_VERBOSE;
    if (LogEnabled(logger_, level)) {
      char text[320];
      std::snprintf(text, sizeof(text),
                    "onnxsparse: %s M=%lld K=%lld N=%lld int8: cuSPARSELt %.2f us, own kernel %.2f us (%s) -> %s", op,
                    static_cast<long long>(m), static_cast<long long>(k), static_cast<long long>(n), lt_us, own_us,
                    source, use_own ? "own" : "cuSPARSELt");
      ONNXSPARSE_LOG(logger_, level, text);
    }
  } else if (!decided) {
    use_own = true;  // no cuSPARSELt weight (small M untuned, absent, or a shape it refuses)
    if (lt_usable) {
      if (!wants_lt && options_.cusparselt_tune == RuntimeOptions::kTuneCache) {
        NoteUntunedOnce(logger_, StrCat(op, " M=", m, " N=", n, " K=", k));
      }
      std::lock_guard<std::mutex> lock(mutex_);
      own_is_faster_[std::make_pair(slot, m)] = true;
    }
  }

  QGemmArgs rest = args;
  if (weight != nullptr && !use_own) {
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, shift());
    bool used = false;
    ONNXSPARSE_RETURN_IF_ERROR(weight->Run(op, lt_input(), m_main, product, ldc, 1.0f, stream, &used));
    if (used) {
      // The per-column terms (one small pass: the scales may change per call), then the epilogue.
      QEpilogue epi = args.epi;
      epi.col_offset = terms_.as<int32_t>();
      epi.col_scale = reinterpret_cast<const float*>(static_cast<const char*>(terms_.get()) + terms_scale_at_);
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchQColumnTerms(args.epi, n, terms_.as<int32_t>(),
                                                             const_cast<float*>(epi.col_scale), stream));
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchQEpilogue(product, ldc, m_main, n, epi, stream));
      rest.m = m - m_main;
      rest.x = static_cast<const uint8_t*>(args.x) + m_main * k;
      rest.epi.m_offset = args.epi.m_offset + m_main;
    }
  }
  if (rest.m > 0) ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchQGemmOwn(rest, stream));
  return Ort::Status{nullptr};
}

}  // namespace onnxsparse::cuda
