#include "cuda/sparse_gemm_runner.h"

#include <type_traits>

#include "common/log.h"
#include "common/status.h"
#include "cuda/activation_impl.cuh"
#include "cuda/cuda_utils.h"
#include "cuda/nonfinite_impl.cuh"

namespace onnxsparse::cuda {

namespace {
// ReLU over count contiguous elements of Y.
template <typename T>
cudaError_t LaunchRelu(void* y, int64_t count, cudaStream_t stream) {
  Activation relu;
  relu.kind = ActivationKind::kRelu;
  return LaunchActivation<T>(static_cast<T*>(y), count, relu, stream);
}
}  // namespace

void SparseGemmRunner::Init(const OrtKernelInfo* info, size_t values_input, size_t index_input, size_t bias_input) {
  values_input_ = values_input;
  weight_constant_ = InputIsConstant(info, values_input) && InputIsConstant(info, index_input);
  bias_constant_ = InputIsConstant(info, bias_input);
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

bool SparseGemmRunner::ConstantMatrixShape(const OrtKernelInfo* info, size_t input, int64_t* rows, int64_t* columns) {
  const OrtApi& api = Ort::GetApi();
  int is_constant = 0;
  const OrtValue* value = nullptr;
  OrtStatus* status = api.KernelInfoGetConstantInput_tensor(info, input, &is_constant, &value);
  if (status != nullptr) {
    api.ReleaseStatus(status);
    return false;
  }
  if (is_constant == 0 || value == nullptr) return false;
  OrtTensorTypeAndShapeInfo* shape = nullptr;
  if ((status = api.GetTensorTypeAndShape(value, &shape)) != nullptr) {
    api.ReleaseStatus(status);
    return false;
  }
  size_t count = 0;
  int64_t dims[2] = {0, 0};
  bool ok = (status = api.GetDimensionsCount(shape, &count)) == nullptr && count == 2 &&
            (status = api.GetDimensions(shape, dims, 2)) == nullptr;
  if (status != nullptr) api.ReleaseStatus(status);
  api.ReleaseTensorTypeAndShapeInfo(shape);
  *rows = dims[0];
  *columns = dims[1];
  return ok;
}

void SparseGemmRunner::PrepareCuSparseLt(const OrtKernelInfo* info, ElementType type) {
  int64_t n = 0, half_k = 0;
  if (!weight_constant_ || device_ < 0 || !ConstantMatrixShape(info, values_input_, &n, &half_k)) return;
  // values are [N, K/2]; the ReLU of the plans is SetRelu's (WeightLocked: with a constant bias or none).
  SparseLtWeight::Prepare(options_, device_, type, n, 2 * half_k, bias_constant_, relu_, &preparer_);
}

template <typename T>
Ort::Status SparseGemmRunner::OwnArgsLocked(const char* op, cudaStream_t stream, int slot, const SparseGemmArgs& args,
                                            SparseGemmArgs* own) {
  *own = args;
  own->pdl = options_.cuda_pdl;
  own->persistent = options_.cuda_persistent;
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

SparseLtWeight* SparseGemmRunner::WeightLocked(const char* op, cudaStream_t stream, int slot,
                                               const SparseGemmArgs& args, ElementType type, bool lt_bias) {
  if (static_cast<int>(sparselt_.size()) <= slot) {
    sparselt_.resize(slot + 1);
    sparselt_error_.resize(slot + 1);
  }
  if (static_cast<int>(own_ran_.size()) <= slot) own_ran_.resize(slot + 1, false);
  if (!sparselt_[slot] && sparselt_error_[slot].empty()) {
    auto built = std::make_unique<SparseLtWeight>(options_, logger_);
    built->SetRelu(relu_ && (args.bias == nullptr || lt_bias));  // a bias added later must come first
    Ort::Status status =
        built->Build(op, type, args.values, args.index, args.n, args.k, lt_bias ? args.bias : nullptr, stream);
    if (status.IsOK()) sparselt_[slot] = std::move(built);
    else sparselt_error_[slot] = status.GetErrorMessage();  // a shape it rejects: own kernel
  }
  return sparselt_[slot].get();
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
    const ElementType type = HalfElementType<T>();
    const bool lt_bias = bias_constant_ && args.bias != nullptr;
    GemmCall call;
    call.op = op;
    call.slot = slot;
    call.type = type;
    call.m = args.m;
    call.n = args.n;
    call.k = args.k;
    call.ldy = args.ldy;
    call.lt_bias = lt_bias;
    call.lt_candidate = weight_constant_ && m_main > 0;
    GemmChoice::Result choice;
    ONNXSPARSE_RETURN_IF_ERROR(choice_.Choose(
        stream, call, [&] { return WeightLocked(op, stream, slot, args, type, lt_bias); },
        [&](SparseLtWeight* weight, float* lt_us) {
          return weight->Time(op, args.x, m_main, args.y, args.ldy, args.alpha, stream, lt_us);
        },
        [&](float* own_us) -> Ort::Status {
          SparseGemmArgs own;
          ONNXSPARSE_RETURN_IF_ERROR(OwnArgsLocked<T>(op, stream, slot, args, &own));
          *own_us = TimeOnStream(stream, 10, [&] { return LaunchSparseGemm<T>(own, stream) == cudaSuccess; });
          return Ort::Status{nullptr};
        },
        [&](bool use_own) {
          // A packed weight built only to be timed, and beaten: freed until the own kernel serves.
          if (!use_own && !own_ran_[slot] && static_cast<int>(packed_.size()) > slot) packed_[slot].reset();
        },
        &choice));
    SparseLtWeight* weight = choice.weight;
    const bool use_own = choice.use_own;
    if (weight != nullptr && !use_own) {
      bool used = false;
      ONNXSPARSE_RETURN_IF_ERROR(weight->Run(op, args.x, m_main, args.y, args.ldy, args.alpha, stream, &used));
      if (used) {
        if (args.bias != nullptr && !bias_constant_) {
          ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchAddBias<T>(static_cast<T*>(args.y), m_main, args.n, args.ldy,
                                                               static_cast<const T*>(args.bias), stream));
          if (relu_) ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchRelu<T>(args.y, m_main * args.n, stream));
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
    if (relu_) ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchRelu<T>(rest.y, rest.m * args.n, stream));
  }
  return Ort::Status{nullptr};
}

template <typename T>
Ort::Status SparseGemmRunner::PropagateNonFinite(const char* op, cudaStream_t stream, const T* x, int64_t m, int64_t k,
                                                 const T* values, const uint8_t* index, int64_t n, T* y, int64_t ldy,
                                                 const unsigned int* flag) {
  if (!options_.cuda_nonfinite) return Ort::Status{nullptr};  // off: finite inputs only
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchPropagateNonFinite<T>(x, m, k, values, index, n, y, ldy, relu_, flag,
                                                                  options_.cuda_pdl, stream));
  return Ort::Status{nullptr};
}

template Ort::Status SparseGemmRunner::PropagateNonFinite<float>(const char*, cudaStream_t, const float*, int64_t,
                                                                 int64_t, const float*, const uint8_t*, int64_t,
                                                                 float*, int64_t, const unsigned int*);
template Ort::Status SparseGemmRunner::PropagateNonFinite<__half>(const char*, cudaStream_t, const __half*, int64_t,
                                                                  int64_t, const __half*, const uint8_t*, int64_t,
                                                                  __half*, int64_t, const unsigned int*);
template Ort::Status SparseGemmRunner::PropagateNonFinite<__nv_bfloat16>(const char*, cudaStream_t,
                                                                         const __nv_bfloat16*, int64_t, int64_t,
                                                                         const __nv_bfloat16*, const uint8_t*, int64_t,
                                                                         __nv_bfloat16*, int64_t, const unsigned int*);

template Ort::Status SparseGemmRunner::Run<float>(const char*, cudaStream_t, int, const SparseGemmArgs&);
template Ort::Status SparseGemmRunner::Run<__half>(const char*, cudaStream_t, int, const SparseGemmArgs&);
template Ort::Status SparseGemmRunner::Run<__nv_bfloat16>(const char*, cudaStream_t, int, const SparseGemmArgs&);

}  // namespace onnxsparse::cuda
