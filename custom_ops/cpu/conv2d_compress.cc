#include "cpu/conv2d_compress.h"

#include <algorithm>

#include "common/float_convert.h"
#include "common/op_shapes.h"
#include "common/sparse_format.h"
#include "common/status.h"
#include "cpu/constant_weight.h"
#include "cpu/epilogue.h"
#include "cpu/fast_conv.h"
#include "cpu/nonfinite.h"
#include "cpu/release_pages.h"
#include "cpu/sparse_gemm.h"

namespace onnxsparse::cpu {

namespace {

// X's tiles of output pixels, im2col'ed into the panel in the weight's (kh, kw, c) order.
template <typename T>
struct ConvProblem {
  int64_t batches = 0, m = 0, n = 0, k = 0;  // batches = images * groups, m = OH*OW, n = OC/group
  const ConvAttributes* attrs = nullptr;
  ConvGeometry geo{};
  const T* x = nullptr;
  const T* values = nullptr;
  const uint8_t* index = nullptr;
  const T* bias = nullptr;
  T* y = nullptr;
  Activation act;

  void Pack(int64_t batch, int64_t m0, int64_t mc, float* panel) const {
    const int64_t group = attrs->group;
    const int64_t image = batch / group;
    const int64_t g = batch % group;
    const int64_t plane = geo.height * geo.width;
    const T* x_group = x + (image * geo.channels + g * geo.channels_per_group) * plane;
    const int64_t kh_size = attrs->kernel_shape[0], kw_size = attrs->kernel_shape[1];
    const int64_t stride_h = attrs->strides[0], stride_w = attrs->strides[1];
    const int64_t dil_h = attrs->dilations[0], dil_w = attrs->dilations[1];

    int64_t top[kTileM], left[kTileM];  // input row/column of each pixel's kernel origin
    for (int64_t i = 0; i < mc; ++i) {
      const int64_t p = m0 + i;
      top[i] = (p / geo.out_width) * stride_h - geo.pad_top;
      left[i] = (p % geo.out_width) * stride_w - geo.pad_left;
    }
    const int64_t cg = geo.channels_per_group;
    for (int64_t kh = 0; kh < kh_size; ++kh) {
      for (int64_t kw = 0; kw < kw_size; ++kw) {
        int64_t offset[kTileM];
        bool inside[kTileM];
        for (int64_t i = 0; i < kTileM; ++i) {
          const int64_t ih = i < mc ? top[i] + kh * dil_h : -1;
          const int64_t iw = i < mc ? left[i] + kw * dil_w : -1;
          inside[i] = ih >= 0 && ih < geo.height && iw >= 0 && iw < geo.width;
          offset[i] = inside[i] ? ih * geo.width + iw : 0;
        }
        float* dst = panel + (kh * kw_size + kw) * cg * kTileM;
        for (int64_t c = 0; c < cg; ++c) {
          const T* channel = x_group + c * plane;
          float* row = dst + c * kTileM;
          for (int64_t i = 0; i < kTileM; ++i) row[i] = inside[i] ? ToFloat(channel[offset[i]]) : 0.0f;
        }
      }
    }
  }

  GemmTarget<T> Target(int64_t batch) const {
    const int64_t group = attrs->group;
    const int64_t image = batch / group;
    const int64_t g = batch % group;
    const int64_t first_row = g * geo.out_channels_per_group;
    GemmTarget<T> target;
    target.values = values + first_row * ValuesPerRow(k);
    target.index = index + first_row * IndexBytesPerRow(k);
    target.bias = bias != nullptr ? bias + first_row : nullptr;
    target.out = y + (image * geo.out_channels + first_row) * m;
    target.out_stride_m = 1;
    target.out_stride_n = m;
    target.act = act;
    return target;
  }
};

// dst[b, c, r] = src[b, r, c] for b < batch, r < rows, c < cols (NHWC <-> NCHW: rows or cols the pixels).
template <typename T>
void TransposeBatched(const T* src, int64_t batch, int64_t rows, int64_t cols, T* dst) {
  for (int64_t b = 0; b < batch; ++b) {
    const T* in = src + b * rows * cols;
    T* out = dst + b * rows * cols;
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) out[c * rows + r] = in[r * cols + c];
    }
  }
}

}  // namespace

template <typename T>
Conv2dCompressKernel<T>::Conv2dCompressKernel(const OrtApi* /*api*/, const OrtKernelInfo* info) noexcept {
  init_error_ = CaptureInitError([&] {
    std::string error = ReadConvAttributes(info, attrs_);
    if (error.empty()) error = ReadActivationAttributes(info, act_);
    if (error.empty()) error = ReadConvLayout(info, &nhwc_);
    isa_ = SelectCpuIsa();
    if (error.empty()) packed_ = PackConstantWeight<T>(info);
    // The fast path reads only packed_ from now on: drop ONNX Runtime's file-mapped copy of the
    // compressed pair from memory (cpu/release_pages.h; pages come back from the file if read).
    if (packed_ != nullptr) ReleaseConstantInputs(info, 1, 2);
    return error;
  });
}

template <typename T>
Ort::Status Conv2dCompressKernel<T>::Compute(OrtKernelContext* context, const Ort::Custom::Tensor<T>& x,
                                             const Ort::Custom::Tensor<T>& values,
                                             const Ort::Custom::Tensor<uint8_t>& index,
                                             std::optional<const Ort::Custom::Tensor<T>*> bias,
                                             Ort::Custom::Tensor<T>& y) {
  return GuardCompute(kOpName, [&]() -> Ort::Status {
    if (!init_error_.empty()) return InvalidArgument(kOpName, init_error_);
    return ComputeImpl(context, x, values, index, bias.has_value() ? *bias : nullptr, y);
  });
}

template <typename T>
Ort::Status Conv2dCompressKernel<T>::ComputeImpl(OrtKernelContext* context, const Ort::Custom::Tensor<T>& x,
                                                 const Ort::Custom::Tensor<T>& values,
                                                 const Ort::Custom::Tensor<uint8_t>& index,
                                                 const Ort::Custom::Tensor<T>* bias, Ort::Custom::Tensor<T>& y) {
  ConvGeometry geo;
  const std::vector<int64_t> x_shape = nhwc_ ? NchwShapeOfNhwc(x.Shape()) : x.Shape();
  ONNXSPARSE_RETURN_IF_ERROR(ResolveConvGeometry(kOpName, attrs_, x_shape, values.Shape(), index.Shape(),
                                                 bias != nullptr ? &bias->Shape() : nullptr, geo));
  const T* bias_data = bias != nullptr ? bias->Data() : nullptr;
  T* y_data = nhwc_ ? y.Allocate({geo.batch, geo.out_height, geo.out_width, geo.out_channels})
                    : y.Allocate({geo.batch, geo.out_channels, geo.out_height, geo.out_width});
  // An empty output (N = 0, OC = 0, or OH or OW = 0 from an empty input) is an empty tensor, as
  // dense Conv gives for N = 0; nothing below may divide by its size.
  if (geo.batch == 0 || geo.out_channels == 0 || geo.out_height == 0 || geo.out_width == 0) return Ort::Status{nullptr};
  if (!nhwc_) return ComputeNchw(context, x.Data(), values, index, bias_data, geo, y_data);

  // NHWC: [N, HW, C] -> [N, C, HW], the NCHW convolution, [N, OC, OHW] -> [N, OHW, OC].
  const int64_t plane = geo.height * geo.width, out_plane = geo.out_height * geo.out_width;
  std::vector<T> x_nchw(static_cast<size_t>(geo.batch * geo.channels * plane));
  std::vector<T> y_nchw(static_cast<size_t>(geo.batch * geo.out_channels * out_plane));
  TransposeBatched(x.Data(), geo.batch, plane, geo.channels, x_nchw.data());
  ONNXSPARSE_RETURN_IF_ERROR(ComputeNchw(context, x_nchw.data(), values, index, bias_data, geo, y_nchw.data()));
  TransposeBatched(y_nchw.data(), geo.batch, geo.out_channels, out_plane, y_data);
  return Ort::Status{nullptr};
}

template <typename T>
Ort::Status Conv2dCompressKernel<T>::ComputeNchw(OrtKernelContext* context, const T* x_data,
                                                 const Ort::Custom::Tensor<T>& values,
                                                 const Ort::Custom::Tensor<uint8_t>& index, const T* bias_data,
                                                 const ConvGeometry& geo, T* y_data) {
  // NaN/Inf in X reach the outputs the dense Conv would give them (cpu/nonfinite.h); then the
  // activation runs after that fix-up, as a pass of its own, instead of in the epilogue.
  const bool non_finite = AnyNonFinite(x_data, geo.batch * geo.channels * geo.height * geo.width);
  ONNXSPARSE_RETURN_IF_ERROR(
      ComputeProduct(context, x_data, values, index, bias_data, geo, y_data, non_finite ? nullptr : &act_));
  if (non_finite) {
    PropagateNonFiniteConv(x_data, attrs_, geo, index.Data(), y_data);
    ActivateOutput(act_, y_data, geo.batch * geo.out_channels * geo.out_height * geo.out_width);
  }
  return Ort::Status{nullptr};
}

template <typename T>
Ort::Status Conv2dCompressKernel<T>::ComputeProduct(OrtKernelContext* context, const T* x_data,
                                                    const Ort::Custom::Tensor<T>& values,
                                                    const Ort::Custom::Tensor<uint8_t>& index, const T* bias_data,
                                                    const ConvGeometry& geo, T* y_data, const Activation* act) {
  if (packed_ != nullptr && packed_->rows == geo.out_channels && packed_->k == geo.k) {
    std::vector<float> bias32;
    if (bias_data != nullptr) {
      bias32.resize(static_cast<size_t>(geo.out_channels));
      for (int64_t n = 0; n < geo.out_channels; ++n) bias32[n] = ToFloat(bias_data[n]);
    }
    if (!FastConv<T>(context, FastKernels(isa_), *packed_, attrs_, geo, x_data,
                     bias_data != nullptr ? bias32.data() : nullptr, y_data, act)) {
      return RuntimeError(kOpName, "the convolution failed (out of memory?)");
    }
    return Ort::Status{nullptr};
  }

  ConvProblem<T> problem;
  problem.batches = geo.batch * attrs_.group;
  problem.m = geo.out_height * geo.out_width;
  problem.n = geo.out_channels_per_group;
  problem.k = geo.k;
  problem.attrs = &attrs_;
  problem.geo = geo;
  problem.x = x_data;
  problem.values = values.Data();
  problem.index = index.Data();
  problem.bias = bias_data;
  problem.y = y_data;
  if (act != nullptr) problem.act = *act;
  return SparseGemm<T>(context, kOpName, problem, 1.0f);
}

template struct Conv2dCompressKernel<float>;
template struct Conv2dCompressKernel<Ort::Float16_t>;
template struct Conv2dCompressKernel<Ort::BFloat16_t>;

}  // namespace onnxsparse::cpu
