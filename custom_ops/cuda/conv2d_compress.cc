#include "cuda/conv2d_compress.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/log.h"
#include "common/attributes.h"
#include "common/op_shapes.h"
#include "common/status.h"
#include "cuda/activation_impl.cuh"
#include "cuda/conv2d_compress_impl.cuh"
#include "cuda/cuda_utils.h"
#include "cuda/sparse_gemm_impl.cuh"

namespace onnxsparse::cuda {

namespace {
constexpr const char* kOp = "Conv2dCompress";

// cuSPARSELt's dense operands need their columns a multiple of 8 elements (16 bytes).
constexpr int64_t kColumnAlign = 8;
int64_t PaddedColumns(int64_t hw) { return (hw + kColumnAlign - 1) / kColumnAlign * kColumnAlign; }
}  // namespace

template <typename OrtT>
Conv2dCompressCuda<OrtT>::Conv2dCompressCuda(const OrtApi*, const OrtKernelInfo* info) noexcept {
  init_error_ = CaptureInitError([&] {
    std::string error = ReadConvAttributes(info, attrs_);
    if (error.empty()) error = ReadActivationAttributes(info, act_);
    if (error.empty()) error = ReadConvLayout(info, &nhwc_);
    if (error.empty() && nhwc_ && attrs_.group != 1) error = "layout \"NHWC\" needs group 1";
    runner_.Init(info, 1, 2, 3);
    // NHWC: Y is the GEMM's own output, so its ReLU goes into the product's epilogue.
    if (error.empty() && nhwc_ && act_.kind == ActivationKind::kRelu) runner_.SetRelu(true);
    options_ = *CurrentKernelContext().options;
    weight_constant_ = InputIsConstant(info, 1) && InputIsConstant(info, 2);
    bias_constant_ = InputIsConstant(info, 3);
    const char* form = std::getenv("ONNXSPARSE_CUDA_CONV_FORM");
    if (form != nullptr && *form != '\0') {
      if (std::strcmp(form, "nchw") == 0) form_ = Form::kNchw;
      else if (std::strcmp(form, "nchw_padded") == 0) form_ = Form::kNchwPadded;
      else if (std::strcmp(form, "nhwc") == 0) form_ = Form::kNhwc;
      else if (std::strcmp(form, "auto") == 0) form_ = Form::kAuto;
      else if (error.empty()) error = StrCat("ONNXSPARSE_CUDA_CONV_FORM='", form, "' is not auto, nchw, nchw_padded or nhwc");
    }
    if (error.empty() && !std::is_same_v<OrtT, float>) {
      // The plans the tuning cache lists for this weight, made ahead: the GEMM's (NHWC rows) and,
      // for a per-image candidate, the batched ones with the bias and ReLU that form fuses.
      const ElementType type = HalfElementType<DeviceType<OrtT>>();
      runner_.PrepareCuSparseLt(info, type);
      int64_t oc = 0, half_k = 0;
      if (!nhwc_ && attrs_.group == 1 && weight_constant_ && runner_.kernel_device() >= 0 &&
          SparseGemmRunner::ConstantMatrixShape(info, 1, &oc, &half_k)) {
        SparseLtWeight::Prepare(options_, runner_.kernel_device(), type, oc, 2 * half_k, bias_constant_,
                                act_.kind == ActivationKind::kRelu, runner_.preparer());
      }
    }
    return error;
  });
}

template <typename OrtT>
Im2colArgs Conv2dCompressCuda<OrtT>::Im2colOf(const ConvGeometry& geo, int64_t channel_offset,
                                               int64_t group_channels) const {
  Im2colArgs a;
  a.batch = geo.batch, a.height = geo.height, a.width = geo.width, a.channels = geo.channels;
  a.channel_offset = channel_offset, a.group_channels = group_channels;
  a.kernel_h = attrs_.kernel_shape[0], a.kernel_w = attrs_.kernel_shape[1];
  a.stride_h = attrs_.strides[0], a.stride_w = attrs_.strides[1];
  a.pad_top = geo.pad_top, a.pad_left = geo.pad_left;
  a.dilation_h = attrs_.dilations[0], a.dilation_w = attrs_.dilations[1];
  a.out_h = geo.out_height, a.out_w = geo.out_width;
  return a;
}

template <typename OrtT>
Ort::Status Conv2dCompressCuda<OrtT>::RunNhwc(const Call& call) {
  const ConvGeometry& geo = call.geo;
  const cudaStream_t stream = call.stream;
  const int64_t batch = geo.batch, channels = geo.channels, height = geo.height, width = geo.width;
  const int64_t oc = geo.out_channels, oh = geo.out_height, ow = geo.out_width, k = geo.k;
  const int64_t cg = geo.channels_per_group, ocg = geo.out_channels_per_group;
  const int64_t kh = attrs_.kernel_shape[0], kw = attrs_.kernel_shape[1];
  const int64_t pt = geo.pad_top, pl = geo.pad_left, pb = geo.pad_bottom, pr = geo.pad_right;
  const std::vector<int64_t>& strides = attrs_.strides;
  const int64_t group = attrs_.group;
  const int64_t pixels = batch * oh * ow;

  // Scratch: the NHWC input, the im2col matrix of one group, the NHWC output.
  const size_t nhwc_bytes = AlignUp(sizeof(T) * batch * height * width * channels);
  const bool direct = kh == 1 && kw == 1 && strides[0] == 1 && strides[1] == 1 && pt == 0 && pl == 0 &&
                      pb == 0 && pr == 0 && group == 1;  // the NHWC input is the im2col matrix
  const size_t col_bytes = direct ? 0 : AlignUp(sizeof(T) * pixels * k);
  const size_t out_bytes = AlignUp(sizeof(T) * pixels * oc);
  const size_t flag_bytes = direct ? 0 : AlignUp(sizeof(unsigned int));
  cudaError_t err = cudaSuccess;
  char* scratch = static_cast<char*>(StreamScratch(stream, nhwc_bytes + col_bytes + out_bytes + flag_bytes, &err));
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, err);
  T* nhwc = reinterpret_cast<T*>(scratch);
  T* col = direct ? nhwc : reinterpret_cast<T*>(scratch + nhwc_bytes);
  T* out_nhwc = reinterpret_cast<T*>(scratch + nhwc_bytes + col_bytes);
  unsigned int* flag = nullptr;  // the im2col pass's NaN/Inf flag (per stream, like the scratch)
  if (!direct && options_.cuda_nonfinite) {
    flag = reinterpret_cast<unsigned int*>(scratch + nhwc_bytes + col_bytes + out_bytes);
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, cudaMemsetAsync(flag, 0, sizeof(unsigned int), stream));
  }

  // [N, C, HW] -> [N, HW, C]
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, LaunchTranspose<T>(call.x, nhwc, batch, channels, height * width, nullptr, stream));
  const int64_t half_k = k / 2, index_stride = (k + 7) / 8;
  for (int64_t g = 0; g < group; ++g) {
    if (!direct) {
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, LaunchIm2colNhwc<T>(nhwc, Im2colOf(geo, g * cg, cg), col, flag, stream));
    }
    SparseGemmArgs args;
    args.x = col;
    args.m = pixels;
    args.k = k;
    args.n = ocg;
    args.values = call.values + g * ocg * half_k;
    args.index = call.index + g * ocg * index_stride;
    args.bias = nullptr;  // added in the final transpose
    args.alpha = 1.0f;
    args.y = out_nhwc + g * ocg;
    args.ldy = oc;
    ONNXSPARSE_RETURN_IF_ERROR(runner_.Run<T>(kOp, stream, static_cast<int>(g), args));
    ONNXSPARSE_RETURN_IF_ERROR(runner_.PropagateNonFinite<T>(kOp, stream, col, pixels, k,
                                                             static_cast<const T*>(args.values), args.index, ocg,
                                                             static_cast<T*>(args.y), oc, flag));  // NaN/Inf like dense
  }
  // [N, OH*OW, OC] -> [N, OC, OH*OW], + bias
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, LaunchTranspose<T>(out_nhwc, call.y, batch, oh * ow, oc, call.bias, stream));
  // The fused activation: an elementwise pass on the stream, after the bias and the NaN/Inf fix-up.
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, LaunchActivation<T>(call.y, batch * oc * oh * ow, act_, stream));
  return Ort::Status{nullptr};
}

template <typename OrtT>
Ort::Status Conv2dCompressCuda<OrtT>::RunNhwcLayout(const Call& call) {
  const ConvGeometry& geo = call.geo;
  const cudaStream_t stream = call.stream;
  const int64_t kh = attrs_.kernel_shape[0], kw = attrs_.kernel_shape[1];
  const int64_t pixels = geo.batch * geo.out_height * geo.out_width, k = geo.k, oc = geo.out_channels;
  const bool direct = kh == 1 && kw == 1 && attrs_.strides[0] == 1 && attrs_.strides[1] == 1 && geo.pad_top == 0 &&
                      geo.pad_left == 0 && geo.pad_bottom == 0 && geo.pad_right == 0;  // X is the im2col matrix
  const T* col = call.x;
  unsigned int* flag = nullptr;  // the im2col pass's NaN/Inf flag: the scan after the product reads it, not col
  if (!direct) {
    cudaError_t err = cudaSuccess;
    const size_t col_bytes = AlignUp(sizeof(T) * pixels * k);
    T* scratch = static_cast<T*>(StreamScratch(stream, col_bytes + AlignUp(sizeof(unsigned int)), &err));
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, err);
    if (options_.cuda_nonfinite) {
      flag = reinterpret_cast<unsigned int*>(reinterpret_cast<char*>(scratch) + col_bytes);
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, cudaMemsetAsync(flag, 0, sizeof(unsigned int), stream));
    }
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(
        kOp, LaunchIm2colNhwc<T>(call.x, Im2colOf(geo, 0, geo.channels), scratch, flag, stream));
    col = scratch;
  }
  SparseGemmArgs args;
  args.x = col;
  args.m = pixels;
  args.k = k;
  args.n = oc;
  args.values = call.values;
  args.index = call.index;
  args.bias = call.bias;  // the runner fuses a constant one into cuSPARSELt, else adds it
  args.alpha = 1.0f;
  args.y = call.y;
  args.ldy = oc;
  ONNXSPARSE_RETURN_IF_ERROR(runner_.Run<T>(kOp, stream, 0, args));
  ONNXSPARSE_RETURN_IF_ERROR(runner_.PropagateNonFinite<T>(kOp, stream, col, pixels, k, call.values, call.index, oc,
                                                           call.y, oc, flag));
  if (!runner_.relu()) ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, LaunchActivation<T>(call.y, pixels * oc, act_, stream));
  return Ort::Status{nullptr};
}

template <typename OrtT>
bool Conv2dCompressCuda<OrtT>::NchwApplies(const Call& call) const {
  if constexpr (std::is_same_v<T, float>) {
    return false;
  } else {
    return form_ != Form::kNhwc && weight_constant_ && attrs_.group == 1 && call.geo.k % 16 == 0 &&
           call.geo.out_channels % 16 == 0 && call.geo.batch > 0 &&
           call.geo.batch * std::max(call.geo.k, call.geo.out_channels) <= 0x7fffffff &&
           call.geo.height * call.geo.width <= 0x7fffffff;  // the kernels' 32-bit rows and pixels
  }
}

template <typename OrtT>
Ort::Status Conv2dCompressCuda<OrtT>::RunNchw(const Call& call, int64_t cols, bool* used) {
  *used = false;
  if constexpr (std::is_same_v<T, float>) {
    return Ort::Status{nullptr};
  } else {
    const ConvGeometry& geo = call.geo;
    const cudaStream_t stream = call.stream;
    const int64_t batch = geo.batch, oc = geo.out_channels, k = geo.k;
    const int64_t hw = geo.out_height * geo.out_width;
    const int64_t kh = attrs_.kernel_shape[0], kw = attrs_.kernel_shape[1];
    const bool direct = kh == 1 && kw == 1 && attrs_.strides[0] == 1 && attrs_.strides[1] == 1 && geo.pad_top == 0 &&
                        geo.pad_left == 0 && geo.pad_bottom == 0 && geo.pad_right == 0 && cols == hw;
    const bool staged = cols != hw;  // the product lands in scratch, its padding dropped by the epilogue
    const size_t col_bytes = direct ? 0 : AlignUp(sizeof(T) * batch * k * cols);
    const size_t d_bytes = staged ? AlignUp(sizeof(T) * batch * oc * cols) : 0;
    T* scratch = nullptr;
    if (col_bytes + d_bytes > 0) {
      cudaError_t err = cudaSuccess;
      scratch = static_cast<T*>(StreamScratch(stream, col_bytes + d_bytes, &err));
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, err);
    }
    const T* col = direct ? call.x : scratch;
    T* d = staged ? reinterpret_cast<T*>(reinterpret_cast<char*>(scratch) + col_bytes) : call.y;
    const bool nonfinite = options_.cuda_nonfinite && nonfinite_flag_.get() != nullptr;
    unsigned int* flag = nonfinite ? nonfinite_flag_.as<unsigned int>() : nullptr;
    if (nonfinite) ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, cudaMemsetAsync(flag, 0, sizeof(unsigned int), stream));
    if (!direct) {
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(
          kOp, LaunchIm2colNchw<T>(call.x, Im2colOf(geo, 0, geo.channels), cols, scratch, flag, stream));
    } else if (nonfinite) {
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, LaunchScanNonFiniteFlat<T>(call.x, batch * k * cols, flag, stream));
    }
    const bool bias_fused = nchw_fuse_ && bias_constant_ && call.bias != nullptr;  // the weight was built with it
    const bool relu_fused = nchw_fuse_ && act_.kind == ActivationKind::kRelu && (call.bias == nullptr || bias_fused);
    ONNXSPARSE_RETURN_IF_ERROR(nchw_weight_->RunBatched(kOp, col, batch, cols, d, relu_fused, stream, used));
    if (!*used) return Ort::Status{nullptr};
    const T* bias_left = bias_fused ? nullptr : call.bias;
    Activation act_left = act_;
    if (relu_fused) act_left.kind = ActivationKind::kNone;
    if (staged || bias_left != nullptr || !act_left.none()) {
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, LaunchConvEpilogueNchw<T>(d, cols, call.y, batch, oc, hw, bias_left,
                                                                     act_left, stream));
    }
    if (nonfinite) {  // last: recomputes whole outputs (bias and activation included)
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, LaunchConvNonFiniteFixNchw<T>(col, k, cols, call.values, call.index,
                                                                         call.bias, act_, batch, oc, hw, call.y, flag,
                                                                         stream));
    }
    return Ort::Status{nullptr};
  }
}

template <typename OrtT>
Ort::Status Conv2dCompressCuda<OrtT>::ChooseNchw(const char* op, const Call& call, int64_t* cols) {
  *cols = 0;
  if (!NchwApplies(call)) return Ort::Status{nullptr};
  const std::array<int64_t, 3> key{call.geo.batch, call.geo.height, call.geo.width};
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = nchw_by_shape_.find(key);
  if (it != nchw_by_shape_.end()) {
    *cols = it->second;
    return Ort::Status{nullptr};
  }
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaStreamIsCapturing(call.stream, &capture));
  if (capture != cudaStreamCaptureStatusNone) return Ort::Status{nullptr};  // NHWC, not remembered
  std::string why;
  if (!CusparseLtAvailable(options_.cusparselt_library, &why)) {
    nchw_by_shape_[key] = 0;
    return Ort::Status{nullptr};
  }
  if (options_.cuda_nonfinite && nonfinite_flag_.get() == nullptr) {
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, nonfinite_flag_.Allocate(sizeof(unsigned int)));
  }
  // The column counts to try: OH*OW as it is (when not a multiple of 8 cuSPARSELt may refuse its
  // rows' smaller alignment), and padded to 8.
  const int64_t hw = call.geo.out_height * call.geo.out_width, padded = PaddedColumns(hw);
  std::vector<int64_t> candidates;
  if (form_ != Form::kNchwPadded && padded != hw) candidates.push_back(hw);
  candidates.push_back(padded);
  // The weight for the batched product: first with the bias and a ReLU in cuSPARSELt's epilogue,
  // then, where cuSPARSELt refuses that plan, with neither (the epilogue pass adds them).
  std::vector<int64_t> usable;
  for (int attempt = 0; attempt < 2 && nchw_error_.empty(); ++attempt) {
    if (!nchw_weight_) {
      const ElementType type = HalfElementType<T>();
      auto built = std::make_unique<SparseLtWeight>(options_, runner_.logger());
      const bool bias_fused = nchw_fuse_ && bias_constant_ && call.bias != nullptr;
      Ort::Status status = built->Build(op, type, call.values, call.index, call.geo.out_channels, call.geo.k,
                                        bias_fused ? call.bias : nullptr, call.stream);
      if (status.IsOK()) nchw_weight_ = std::move(built);
      else nchw_error_ = status.GetErrorMessage();
    }
    if (!nchw_weight_) break;
    usable.clear();
    for (int64_t c : candidates) {  // prepares (tunes, when searching) each batched plan
      bool used = false;
      ONNXSPARSE_RETURN_IF_ERROR(RunNchw(call, c, &used));
      if (used) usable.push_back(c);
    }
    const bool fused_any = call.bias != nullptr || act_.kind == ActivationKind::kRelu;
    const bool serving = std::any_of(nchw_by_shape_.begin(), nchw_by_shape_.end(),
                                     [](const auto& entry) { return entry.second > 0; });  // a graph may hold it
    if (!usable.empty() || !nchw_fuse_ || !fused_any || serving) break;
    nchw_fuse_ = false;  // refused with the fused epilogue: once more without
    nchw_weight_.reset();
  }
  std::string times;
  if (usable.empty()) {
    *cols = 0;
  } else if (form_ != Form::kAuto) {
    *cols = usable.front();
  } else {
    ONNXSPARSE_RETURN_IF_ERROR(RunNhwc(call));  // its own first-call choices, before it is timed
    float best = TimeOnStream(call.stream, 5, [&] { return RunNhwc(call).IsOK(); });
    times = StrCat(" NHWC ", static_cast<int>(best * 100.f) / 100.0, " us");
    for (int64_t c : usable) {
      const float us = TimeOnStream(call.stream, 5, [&] {
        bool again = false;
        return RunNchw(call, c, &again).IsOK() && again;
      });
      times += StrCat(", per-image cols=", c, " ", static_cast<int>(us * 100.f) / 100.0, " us");
      if (us > 0.f && (best <= 0.f || us < best)) {
        best = us;
        *cols = c;
      }
    }
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaGetLastError());
  }
  nchw_by_shape_[key] = *cols;
  const OrtLoggingLevel level = options_.log_verbose ? ORT_LOGGING_LEVEL_WARNING : ORT_LOGGING_LEVEL_VERBOSE;
  if (LogEnabled(runner_.logger(), level)) {
    char text[240];
    std::snprintf(text, sizeof(text), "onnxsparse: %s N=%lld C=%lld H=%lld W=%lld OC=%lld K=%lld: ", op,
                  static_cast<long long>(call.geo.batch), static_cast<long long>(call.geo.channels),
                  static_cast<long long>(call.geo.height), static_cast<long long>(call.geo.width),
                  static_cast<long long>(call.geo.out_channels), static_cast<long long>(call.geo.k));
    std::string taken;
    for (int64_t c : usable) taken += StrCat(taken.empty() ? "" : ",", c);
    ONNXSPARSE_LOG(runner_.logger(), level,
                   StrCat(text, "cuSPARSELt batched takes cols ", taken.empty() ? "none" : taken,
                          nchw_error_.empty() ? "" : StrCat(" (", nchw_error_, ")"), nchw_fuse_ ? "" : " (epilogue not fused)",
                          times.empty() ? "" : ";", times, " -> ",
                          *cols > 0 ? StrCat("per-image cols=", *cols) : std::string("NHWC")));
  }
  return Ort::Status{nullptr};
}

template <typename OrtT>
Ort::Status Conv2dCompressCuda<OrtT>::Compute(OrtKernelContext* context, const Ort::Custom::Tensor<OrtT>& x,
                                             const Ort::Custom::Tensor<OrtT>& values,
                                             const Ort::Custom::Tensor<uint8_t>& index,
                                             std::optional<const Ort::Custom::Tensor<OrtT>*> bias,
                                             Ort::Custom::Tensor<OrtT>& y) {
  return GuardCompute(kOp, [&]() -> Ort::Status {
    if (!init_error_.empty()) return InvalidArgument(kOp, init_error_);
    const Ort::Custom::Tensor<OrtT>* bias_tensor = bias.has_value() ? *bias : nullptr;
    Call call;
    const std::vector<int64_t> x_shape = nhwc_ ? NchwShapeOfNhwc(x.Shape()) : x.Shape();
    ONNXSPARSE_RETURN_IF_ERROR(ResolveConvGeometry(kOp, attrs_, x_shape, values.Shape(), index.Shape(),
                                                   bias_tensor != nullptr ? &bias_tensor->Shape() : nullptr,
                                                   call.geo));
    const ConvGeometry& geo = call.geo;
    call.bias = bias_tensor != nullptr ? reinterpret_cast<const T*>(bias_tensor->Data()) : nullptr;
    call.y = reinterpret_cast<T*>(nhwc_ ? y.Allocate({geo.batch, geo.out_height, geo.out_width, geo.out_channels})
                                        : y.Allocate({geo.batch, geo.out_channels, geo.out_height, geo.out_width}));
    const int64_t pixels = geo.batch * geo.out_height * geo.out_width;
    if (pixels == 0 || geo.out_channels == 0) return Ort::Status{nullptr};
    call.x = reinterpret_cast<const T*>(x.Data());
    call.values = reinterpret_cast<const T*>(values.Data());
    call.index = index.Data();
    call.stream = ComputeStream(context);
    ScopedDevice device(runner_.Device(call.stream));  // the session's device, not the thread's
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, device.error());
    if (LogEnabled(runner_.logger(), runner_.trace_level())) {
      cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
      cudaStreamIsCapturing(call.stream, &capture);
      char text[200];
      std::snprintf(text, sizeof(text), "onnxsparse trace: %s enter %p stream %p M=%lld K=%lld N=%lld capturing=%d",
                    kOp, static_cast<void*>(this), static_cast<void*>(call.stream), static_cast<long long>(pixels),
                    static_cast<long long>(geo.k), static_cast<long long>(geo.out_channels), static_cast<int>(capture));
      ONNXSPARSE_LOG(runner_.logger(), runner_.trace_level(), text);
    }
    ONNXSPARSE_RETURN_IF_ERROR(runner_.ValidateOnce(kOp, call.stream, call.index, geo.out_channels, geo.k));
    if (nhwc_) return RunNhwcLayout(call);
    int64_t cols = 0;
    ONNXSPARSE_RETURN_IF_ERROR(ChooseNchw(kOp, call, &cols));
    bool used = false;
    if (cols > 0) ONNXSPARSE_RETURN_IF_ERROR(RunNchw(call, cols, &used));
    if (!used) ONNXSPARSE_RETURN_IF_ERROR(RunNhwc(call));
    if (LogEnabled(runner_.logger(), runner_.trace_level())) {
      ONNXSPARSE_LOG(runner_.logger(), runner_.trace_level(),
                     StrCat("onnxsparse trace: ", kOp, " leave ", static_cast<void*>(this), used ? " (per image)" : ""));
    }
    return Ort::Status{nullptr};
  });
}

template struct Conv2dCompressCuda<float>;
template struct Conv2dCompressCuda<Ort::Float16_t>;
template struct Conv2dCompressCuda<Ort::BFloat16_t>;

}  // namespace onnxsparse::cuda
