#include "cuda/conv2d_compress.h"

#include <cstdio>
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
}  // namespace

template <typename OrtT>
Conv2dCompressCuda<OrtT>::Conv2dCompressCuda(const OrtApi*, const OrtKernelInfo* info) noexcept {
  init_error_ = CaptureInitError([&] {
    std::string error = ReadConvAttributes(info, attrs_);
    if (error.empty()) error = ReadActivationAttributes(info, act_);
    runner_.Init(info, 1, 2, 3);
    return error;
  });
}

template <typename OrtT>
Ort::Status Conv2dCompressCuda<OrtT>::Compute(OrtKernelContext* context, const Ort::Custom::Tensor<OrtT>& x,
                                             const Ort::Custom::Tensor<OrtT>& values,
                                             const Ort::Custom::Tensor<uint8_t>& index,
                                             std::optional<const Ort::Custom::Tensor<OrtT>*> bias,
                                             Ort::Custom::Tensor<OrtT>& y) {
  return GuardCompute(kOp, [&]() -> Ort::Status {
    using T = DeviceType<OrtT>;
    if (!init_error_.empty()) return InvalidArgument(kOp, init_error_);
    const Ort::Custom::Tensor<OrtT>* bias_tensor = bias.has_value() ? *bias : nullptr;
    ConvGeometry geo;
    ONNXSPARSE_RETURN_IF_ERROR(ResolveConvGeometry(kOp, attrs_, x.Shape(), values.Shape(), index.Shape(),
                                                   bias_tensor != nullptr ? &bias_tensor->Shape() : nullptr, geo));
    const int64_t batch = geo.batch, channels = geo.channels, height = geo.height, width = geo.width;
    const int64_t oc = geo.out_channels, oh = geo.out_height, ow = geo.out_width, k = geo.k;
    const int64_t cg = geo.channels_per_group, ocg = geo.out_channels_per_group;
    const int64_t kh = attrs_.kernel_shape[0], kw = attrs_.kernel_shape[1];
    const int64_t pt = geo.pad_top, pl = geo.pad_left, pb = geo.pad_bottom, pr = geo.pad_right;
    const std::vector<int64_t>& strides = attrs_.strides;
    const std::vector<int64_t>& dilations = attrs_.dilations;
    const int64_t group = attrs_.group;
    const T* bias_ptr = bias_tensor != nullptr ? reinterpret_cast<const T*>(bias_tensor->Data()) : nullptr;
    T* out = reinterpret_cast<T*>(y.Allocate({batch, oc, oh, ow}));
    const int64_t pixels = batch * oh * ow;
    if (pixels == 0 || oc == 0) return Ort::Status{nullptr};
    cudaStream_t stream = ComputeStream(context);
    ScopedDevice device(runner_.Device(stream));  // the session's device, not the thread's
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, device.error());
    if (LogEnabled(runner_.logger(), runner_.trace_level())) {
      cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
      cudaStreamIsCapturing(stream, &capture);
      char text[200];
      std::snprintf(text, sizeof(text), "onnxsparse trace: %s enter %p stream %p M=%lld K=%lld N=%lld capturing=%d",
                    kOp, static_cast<void*>(this), static_cast<void*>(stream), static_cast<long long>(pixels),
                    static_cast<long long>(k), static_cast<long long>(oc), static_cast<int>(capture));
      ONNXSPARSE_LOG(runner_.logger(), runner_.trace_level(), text);
    }
    ONNXSPARSE_RETURN_IF_ERROR(runner_.ValidateOnce(kOp, stream, index.Data(), oc, k));

    // Scratch: the NHWC input, the im2col matrix of one group, the NHWC output.
    const size_t nhwc_bytes = AlignUp(sizeof(T) * batch * height * width * channels);
    const bool direct = kh == 1 && kw == 1 && strides[0] == 1 && strides[1] == 1 && pt == 0 && pl == 0 &&
                        pb == 0 && pr == 0 && group == 1;  // the NHWC input is the im2col matrix
    const size_t col_bytes = direct ? 0 : AlignUp(sizeof(T) * pixels * k);
    const size_t out_bytes = AlignUp(sizeof(T) * pixels * oc);
    cudaError_t err = cudaSuccess;
    char* scratch = static_cast<char*>(StreamScratch(stream, nhwc_bytes + col_bytes + out_bytes, &err));
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, err);
    T* nhwc = reinterpret_cast<T*>(scratch);
    T* col = direct ? nhwc : reinterpret_cast<T*>(scratch + nhwc_bytes);
    T* out_nhwc = reinterpret_cast<T*>(scratch + nhwc_bytes + col_bytes);

    const T* input = reinterpret_cast<const T*>(x.Data());
    // [N, C, HW] -> [N, HW, C]
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, LaunchTranspose<T>(input, nhwc, batch, channels, height * width, nullptr, stream));
    const int64_t half_k = k / 2, index_stride = (k + 7) / 8;
    for (int64_t g = 0; g < group; ++g) {
      if (!direct) {
        Im2colArgs a;
        a.batch = batch, a.height = height, a.width = width, a.channels = channels;
        a.channel_offset = g * cg, a.group_channels = cg;
        a.kernel_h = kh, a.kernel_w = kw, a.stride_h = strides[0], a.stride_w = strides[1];
        a.pad_top = pt, a.pad_left = pl, a.dilation_h = dilations[0], a.dilation_w = dilations[1];
        a.out_h = oh, a.out_w = ow;
        ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, LaunchIm2colNhwc<T>(nhwc, a, col, stream));
      }
      SparseGemmArgs args;
      args.x = col;
      args.m = pixels;
      args.k = k;
      args.n = ocg;
      args.values = reinterpret_cast<const T*>(values.Data()) + g * ocg * half_k;
      args.index = index.Data() + g * ocg * index_stride;
      args.bias = nullptr;  // added in the final transpose
      args.alpha = 1.0f;
      args.y = out_nhwc + g * ocg;
      args.ldy = oc;
      ONNXSPARSE_RETURN_IF_ERROR(runner_.Run<T>(kOp, stream, static_cast<int>(g), args));
      ONNXSPARSE_RETURN_IF_ERROR(runner_.PropagateNonFinite<T>(kOp, stream, col, pixels, k, args.index, ocg,
                                                               static_cast<T*>(args.y), oc));  // NaN/Inf like dense
    }
    // [N, OH*OW, OC] -> [N, OC, OH*OW], + bias
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, LaunchTranspose<T>(out_nhwc, out, batch, oh * ow, oc, bias_ptr, stream));
    // The fused activation: an elementwise pass on the stream, after the bias and the NaN/Inf fix-up.
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, LaunchActivation<T>(out, batch * oc * oh * ow, act_, stream));
    if (LogEnabled(runner_.logger(), runner_.trace_level())) {
      ONNXSPARSE_LOG(runner_.logger(), runner_.trace_level(),
                     StrCat("onnxsparse trace: ", kOp, " leave ", static_cast<void*>(this)));
    }
    return Ort::Status{nullptr};
  });
}

template struct Conv2dCompressCuda<float>;
template struct Conv2dCompressCuda<Ort::Float16_t>;
template struct Conv2dCompressCuda<Ort::BFloat16_t>;

}  // namespace onnxsparse::cuda
