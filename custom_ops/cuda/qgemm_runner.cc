#include "cuda/qgemm_runner.h"

#include "common/log.h"
#include "common/status.h"
#include "cuda/sparse_gemm_impl.cuh"

namespace onnxsparse::cuda {

namespace {

// Where cuSPARSELt's operands go in the scratch memory: A' (uint8 shifted, or a misaligned int8 A
// copied) [m, k], then the int32 product [m, ldc].
int64_t ProductStride(int64_t n) { return (n + 15) / 16 * 16; }

ElementType ScaledType(const QGemmArgs& args) {
  return args.epi.out_type == QOutType::kFloat ? ElementType::kInt8ScaledFloat : ElementType::kInt8Scaled;
}

bool NeedsShift(const QGemmArgs& args) {
  return args.epi.a_unsigned || reinterpret_cast<uintptr_t>(args.x) % 16 != 0;
}

// The rows cuSPARSELt multiplies: M rounded down to a multiple of kMAlign, or, below kMAlign rows,
// kMAlign rows of which the first M are A's (the rest zero, their products dropped).
int64_t LtRows(int64_t m) { return m >= QGemmRunner::kMAlign ? m / QGemmRunner::kMAlign * QGemmRunner::kMAlign
                                                              : (m > 0 ? QGemmRunner::kMAlign : 0); }

// Whether cuSPARSELt's scaled output (ElementType::kInt8Scaled / kInt8ScaledFloat) can write this
// GEMM's Y: a row-major Y of whole rows (not Conv's NCHW), rows of 16 bytes; a quantized Y without
// Relu (a Relu on the float value is not one on the shifted int8 sum; a float Y fuses it). Never an
// fp16 Y: cuSPARSELt 0.8.0 on an H200 rounds alpha * product to fp16 before it adds the bias, and
// with a uint8 activation's shift (the bias then cancels most of that product) it overflowed to
// infinities (tests/test_cuda_int8.py: test_qmatmul_fp16_output_with_large_zero_point_terms).
bool ScaledOutputApplies(const RuntimeOptions& options, const QGemmArgs& args) {
  const QEpilogue& e = args.epi;
  const bool quantized = !QOutIsFloat(e.out_type);
  return options.cuda_int8_scaled_output && e.out_type != QOutType::kHalf && e.hw == 0 && e.n_offset == 0 &&
         e.ldy == args.n && (quantized ? !e.relu && args.n % 16 == 0 : args.n % 4 == 0);
}

}  // namespace

void QGemmRunner::Init(const OrtKernelInfo* info, size_t values_input, size_t index_input) {
  weight_constant_ = InputIsConstant(info, values_input) && InputIsConstant(info, index_input);
  const KernelContext context = CurrentKernelContext();
  options_ = *context.options;
  device_ = KernelDevice(info);
  logger_ = KernelLogger(info);
  choice_.Init(&options_, logger_, &mutex_);
  // Loads cuSPARSELt from the session's path (onnxsparse.cusparselt.library) before any other use
  // can load it from elsewhere or fail; a missing library is said where a product needs it.
  std::string why;
  CusparseLtAvailable(options_.cusparselt_library, &why);
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
  const int64_t m_lt = LtRows(m);
  if (!weight_constant_ || m_lt == 0 || k % 16 != 0) return 0;
  return AlignUp(static_cast<size_t>(m_lt * k)) + AlignUp(sizeof(int32_t) * m_lt * ProductStride(n));
}

SparseLtWeight* QGemmRunner::WeightLocked(const char* op, cudaStream_t stream, int slot, const QGemmArgs& args,
                                          ElementType type) {
  const int form = type == ElementType::kInt8 ? 0 : 1;
  auto& weights = sparselt_[form];
  auto& errors = sparselt_error_[form];
  if (static_cast<int>(weights.size()) <= slot) {
    weights.resize(slot + 1);
    errors.resize(slot + 1);
  }
  if (!weights[slot] && errors[slot].empty()) {
    auto built = std::make_unique<SparseLtWeight>(options_, logger_);
    if (form == 1) {  // it reads its per-column alpha and bias where Run writes them before each product
      built->SetAlphaVector(ScaledAlpha());
      built->SetRelu(args.epi.relu);  // a float Y only (ScaledOutputApplies)
    }
    Ort::Status status = built->Build(op, type, args.values, args.index, args.n, args.k,
                                      form == 1 ? ScaledBias() : nullptr, stream);
    if (status.IsOK()) weights[slot] = std::move(built);
    else errors[slot] = status.GetErrorMessage();  // a shape it refuses: the own kernel
    if (!status.IsOK() && LogEnabled(logger_, ORT_LOGGING_LEVEL_VERBOSE)) {
      ONNXSPARSE_LOG(logger_, ORT_LOGGING_LEVEL_VERBOSE,
                     StrCat("onnxsparse: ", op, " N=", args.n, " K=", args.k, ": no cuSPARSELt weight (",
                            errors[slot], "); the own kernel serves every M"));
    }
  }
  return weights[slot].get();
}

bool QGemmRunner::ScaledServes(const char* op, cudaStream_t stream, int slot, const QGemmArgs& args,
                               const std::function<Ort::Status(SparseLtWeight*, float*)>& probe) {
  Scaled decided = scaled_.load(std::memory_order_acquire);
  if (decided != Scaled::kUnknown) return decided == Scaled::kYes;  // every call after the first
  std::lock_guard<std::mutex> lock(mutex_);
  decided = scaled_.load(std::memory_order_relaxed);
  if (decided != Scaled::kUnknown) return decided == Scaled::kYes;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess || capture != cudaStreamCaptureStatusNone) {
    return false;  // decided at a call outside a capture; the exact form meanwhile
  }
  SparseLtWeight* weight = WeightLocked(op, stream, slot, args, ScaledType(args));
  float us = -1.f;
  std::string why = weight != nullptr ? "" : "no weight";
  if (weight != nullptr) {
    // Makes (and times) the plan of this M; a plan cuSPARSELt refuses is an answer, not an error.
    Ort::Status probed = probe(weight, &us);
    if (!probed.IsOK()) why = probed.GetErrorMessage(), us = -1.f;
  }
  decided = us > 0.f ? Scaled::kYes : Scaled::kRefused;
  scaled_.store(decided, std::memory_order_release);
  if (decided == Scaled::kRefused) {
    ONNXSPARSE_LOG(logger_, options_.trace ? ORT_LOGGING_LEVEL_WARNING : ORT_LOGGING_LEVEL_VERBOSE,
                   StrCat("onnxsparse: ", op, " N=", args.n, " K=", args.k,
                          ": cuSPARSELt does not scale this output in its epilogue (", why.empty() ? "no plan" : why,
                          "); the int32 product and the epilogue pass serve it"));
  }
  return decided == Scaled::kYes;
}

Ort::Status QGemmRunner::Run(const char* op, cudaStream_t stream, int slot, const QGemmArgs& args, void* scratch) {
  const int64_t m = args.m, n = args.n, k = args.k;
  // cuSPARSELt multiplies m_lt rows (ScratchBytes is 0 when it cannot serve) and gives m_done of them:
  // M's whole multiples of kMAlign, or, below kMAlign rows, all of M padded to kMAlign in the scratch
  // (the exact form only: Y has no room for the padding rows).
  const int64_t m_lt = scratch != nullptr ? LtRows(m) : 0;
  const bool padded = m_lt > m;
  const int64_t m_main = padded ? 0 : m_lt;  // the rows the scaled form may write
  const int64_t m_done = padded ? m : m_lt;
  const int64_t ldc = ProductStride(n);
  int8_t* shifted = static_cast<int8_t*>(scratch);
  int32_t* product = scratch != nullptr ? reinterpret_cast<int32_t*>(static_cast<char*>(scratch) +
                                                                      AlignUp(static_cast<size_t>(m_lt * k)))
                                        : nullptr;
  const bool copy_a = padded || NeedsShift(args);
  // cuSPARSELt's B: A' in the scratch memory, or A itself (int8, 16-byte aligned, whole rows).
  auto lt_input = [&]() -> const void* { return copy_a ? static_cast<const void*>(shifted) : args.x; };
  auto shift = [&]() -> cudaError_t {
    if (!copy_a) return cudaSuccess;
    return LaunchShiftActivations(args.x, k, m_done, k, args.epi.a_unsigned, shifted, stream, m_lt - m_done);
  };
  // The scaled form: cuSPARSELt writes Y's first m_main rows itself (a uint8 Y as Y - 128, flipped
  // after), from per-column terms written before each product (the scales may change per call).
  void* y_rows = static_cast<char*>(args.epi.y) +
                 args.epi.m_offset * args.epi.ldy * QOutBytes(args.epi.out_type);
  auto scaled_terms = [&]() -> cudaError_t {
    return LaunchQScaledTerms(args.epi, n, ScaledAlpha(), ScaledBias(), stream);
  };
  auto time_scaled = [&](SparseLtWeight* weight, float* us) -> Ort::Status {
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, shift());
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, scaled_terms());
    return weight->Time(op, lt_input(), m_main, y_rows, n, 1.0f, stream, us);
  };
  const bool scaled = m_main > 0 && ScaledOutputApplies(options_, args) && ScaledServes(op, stream, slot, args, time_scaled);
  const ElementType type = scaled ? ScaledType(args) : ElementType::kInt8;

  GemmCall call;
  call.op = op;
  call.slot = slot;
  call.type = type;
  call.m = m;
  call.n = n;
  call.k = k;
  call.ldy = n;
  call.lt_bias = scaled;  // cuSPARSELt adds the scaled form's bias
  call.lt_candidate = m_lt > 0;
  call.log_tag = scaled ? " int8 (scaled output)" : " int8";
  GemmChoice::Result choice;
  ONNXSPARSE_RETURN_IF_ERROR(choice_.Choose(
      stream, call, [&] { return WeightLocked(op, stream, slot, args, type); },
      [&](SparseLtWeight* weight, float* lt_us) -> Ort::Status {
        if (scaled) return time_scaled(weight, lt_us);
        ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, shift());
        return weight->Time(op, lt_input(), m_lt, product, ldc, 1.0f, stream, lt_us);
      },
      [&](float* own_us) {
        *own_us = TimeOnStream(stream, 10, [&] { return LaunchQGemmOwn(args, stream) == cudaSuccess; });
        return Ort::Status{nullptr};
      },
      [](bool) {}, &choice));
  SparseLtWeight* weight = choice.weight;
  const bool use_own = choice.use_own;

  QGemmArgs rest = args;
  if (weight != nullptr && !use_own) {
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, shift());
    bool used = false;
    if (scaled) {
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, scaled_terms());
      ONNXSPARSE_RETURN_IF_ERROR(weight->Run(op, lt_input(), m_main, y_rows, n, 1.0f, stream, &used));
      if (used && args.epi.out_type == QOutType::kUint8) {  // Y - 128 as int8 -> Y (XOR 0x80, in place)
        ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchShiftActivations(y_rows, n, m_main, n, true,
                                                                   static_cast<int8_t*>(y_rows), stream));
      }
    } else {
      ONNXSPARSE_RETURN_IF_ERROR(weight->Run(op, lt_input(), m_lt, product, ldc, 1.0f, stream, &used));
      if (used) {
        // The per-column terms (one small pass: the scales may change per call), then the epilogue.
        QEpilogue epi = args.epi;
        epi.col_offset = terms_.as<int32_t>();
        epi.col_scale = reinterpret_cast<const float*>(static_cast<const char*>(terms_.get()) + terms_scale_at_);
        ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchQColumnTerms(args.epi, n, terms_.as<int32_t>(),
                                                               const_cast<float*>(epi.col_scale), stream));
        ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchQEpilogue(product, ldc, m_done, n, epi, stream));
      }
    }
    if (used) {  // the own kernel computes the rows cuSPARSELt did not
      rest.m = m - m_done;
      rest.x = static_cast<const uint8_t*>(args.x) + m_done * k;
      rest.epi.m_offset = args.epi.m_offset + m_done;
    }
  }
  if (rest.m > 0) ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchQGemmOwn(rest, stream));
  return Ort::Status{nullptr};
}

}  // namespace onnxsparse::cuda
