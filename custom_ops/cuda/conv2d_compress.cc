#include "cuda/conv2d_compress.h"

#include "common/status.h"
#include "cuda/conv2d_compress_impl.cuh"
#include "cuda/cuda_utils.h"
#include "cuda/sparse_gemm_impl.cuh"

namespace onnxsparse::cuda {

namespace {
constexpr const char* kOp = "Conv2dCompress";

// Output size and begin/end padding of one spatial axis (ONNX Conv, auto_pad resolved).
Ort::Status Resolve(const std::string& auto_pad, int64_t in, int64_t kernel, int64_t stride, int64_t dilation,
                    int64_t& pad_begin, int64_t& pad_end, int64_t& out) {
  const int64_t span = (kernel - 1) * dilation + 1;
  if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
    out = (in + stride - 1) / stride;
    const int64_t total = std::max<int64_t>(0, (out - 1) * stride + span - in);
    pad_begin = auto_pad == "SAME_UPPER" ? total / 2 : total - total / 2;
    pad_end = total - pad_begin;
  } else if (auto_pad == "VALID") {
    pad_begin = pad_end = 0;
    out = in >= span ? (in - span) / stride + 1 : 0;
  } else if (auto_pad == "NOTSET" || auto_pad.empty()) {
    const int64_t padded = in + pad_begin + pad_end;
    out = padded >= span ? (padded - span) / stride + 1 : 0;
  } else {
    return InvalidArgument(kOp, StrCat("unknown auto_pad '", auto_pad, "'"));
  }
  return Ort::Status{nullptr};
}
}  // namespace

template <typename OrtT>
Conv2dCompressCuda<OrtT>::Conv2dCompressCuda(const OrtApi*, const OrtKernelInfo* info) {
  kernel_shape_ = AttributeInts(info, "kernel_shape", {});
  strides_ = AttributeInts(info, "strides", {1, 1});
  pads_ = AttributeInts(info, "pads", {0, 0, 0, 0});
  dilations_ = AttributeInts(info, "dilations", {1, 1});
  group_ = AttributeInt(info, "group", 1);
  auto_pad_ = AttributeString(info, "auto_pad", "NOTSET");
  runner_.Init(info, 1, 2, 3);
}

template <typename OrtT>
Ort::Status Conv2dCompressCuda<OrtT>::Compute(OrtKernelContext* context, const Ort::Custom::Tensor<OrtT>& x,
                                             const Ort::Custom::Tensor<OrtT>& values,
                                             const Ort::Custom::Tensor<uint8_t>& index,
                                             std::optional<const Ort::Custom::Tensor<OrtT>*> bias,
                                             Ort::Custom::Tensor<OrtT>& y) {
  return GuardCompute(kOp, [&]() -> Ort::Status {
    using T = DeviceType<OrtT>;
    if (kernel_shape_.size() != 2) return InvalidArgument(kOp, "kernel_shape must hold 2 values [KH, KW]");
    if (strides_.size() != 2 || dilations_.size() != 2 || pads_.size() != 4) {
      return InvalidArgument(kOp, "strides and dilations need 2 values, pads 4");
    }
    const std::vector<int64_t>& xs = x.Shape();
    if (xs.size() != 4) return InvalidArgument(kOp, StrCat("X must be [N, C, H, W], got rank ", xs.size()));
    const int64_t batch = xs[0], channels = xs[1], height = xs[2], width = xs[3];
    const std::vector<int64_t>& vs = values.Shape();
    if (vs.size() != 2) return InvalidArgument(kOp, "values must be [OC, K/2]");
    const int64_t oc = vs[0];
    const int64_t k = vs[1] * 2;
    const int64_t kh = kernel_shape_[0], kw = kernel_shape_[1];
    if (group_ <= 0 || channels % group_ != 0 || oc % group_ != 0) {
      return InvalidArgument(kOp, StrCat("group=", group_, " must divide C=", channels, " and OC=", oc));
    }
    const int64_t cg = channels / group_;
    if (kh <= 0 || kw <= 0 || k != kh * kw * cg) {
      return InvalidArgument(kOp, StrCat("weight K=", k, " does not match KH*KW*C/group=", kh * kw * cg));
    }
    if (k % 4 != 0) return InvalidArgument(kOp, StrCat("K=", k, " is not a multiple of 4"));
    const std::vector<int64_t>& is = index.Shape();
    if (is.size() != 2 || is[0] != oc || is[1] != (k + 7) / 8) {
      return InvalidArgument(kOp, StrCat("index must be [", oc, ", ", (k + 7) / 8, "]"));
    }
    const T* bias_ptr = nullptr;
    if (bias.has_value() && *bias != nullptr) {
      if ((*bias)->NumberOfElement() != oc) return InvalidArgument(kOp, StrCat("B must have OC=", oc, " elements"));
      bias_ptr = reinterpret_cast<const T*>((*bias)->Data());
    }
    int64_t pt = pads_[0], pl = pads_[1], pb = pads_[2], pr = pads_[3], oh = 0, ow = 0;
    ONNXSPARSE_RETURN_IF_ERROR(Resolve(auto_pad_, height, kh, strides_[0], dilations_[0], pt, pb, oh));
    ONNXSPARSE_RETURN_IF_ERROR(Resolve(auto_pad_, width, kw, strides_[1], dilations_[1], pl, pr, ow));
    T* out = reinterpret_cast<T*>(y.Allocate({batch, oc, oh, ow}));
    const int64_t pixels = batch * oh * ow;
    if (pixels == 0 || oc == 0) return Ort::Status{nullptr};
    cudaStream_t stream = ComputeStream(context);
    ONNXSPARSE_RETURN_IF_ERROR(runner_.ValidateOnce(kOp, stream, index.Data(), oc, k));

    // Scratch: the NHWC input, the im2col matrix of one group, the NHWC output.
    const size_t nhwc_bytes = AlignUp(sizeof(T) * batch * height * width * channels);
    const bool direct = kh == 1 && kw == 1 && strides_[0] == 1 && strides_[1] == 1 && pt == 0 && pl == 0 &&
                        pb == 0 && pr == 0 && group_ == 1;  // the NHWC input is the im2col matrix
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
    const int64_t ocg = oc / group_;
    const int64_t half_k = k / 2, index_stride = (k + 7) / 8;
    for (int64_t g = 0; g < group_; ++g) {
      if (!direct) {
        Im2colArgs a;
        a.batch = batch, a.height = height, a.width = width, a.channels = channels;
        a.channel_offset = g * cg, a.group_channels = cg;
        a.kernel_h = kh, a.kernel_w = kw, a.stride_h = strides_[0], a.stride_w = strides_[1];
        a.pad_top = pt, a.pad_left = pl, a.dilation_h = dilations_[0], a.dilation_w = dilations_[1];
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
    }
    // [N, OH*OW, OC] -> [N, OC, OH*OW], + bias
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, LaunchTranspose<T>(out_nhwc, out, batch, oh * ow, oc, bias_ptr, stream));
    return Ort::Status{nullptr};
  });
}

template struct Conv2dCompressCuda<float>;
template struct Conv2dCompressCuda<Ort::Float16_t>;
template struct Conv2dCompressCuda<Ort::BFloat16_t>;

}  // namespace onnxsparse::cuda
