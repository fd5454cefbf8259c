#include "cpu/conv2d_compress.h"

#include <algorithm>

#include "common/attributes.h"
#include "common/float_convert.h"
#include "common/sparse_format.h"
#include "common/status.h"
#include "cpu/compressed_weight.h"
#include "cpu/constant_weight.h"
#include "cpu/fast_conv.h"
#include "cpu/sparse_gemm.h"

namespace onnxsparse::cpu {

namespace {

std::string ReadConvAttributes(const OrtKernelInfo* info, ConvAttributes& attrs) {
  switch (ReadAttr(info, "kernel_shape", attrs.kernel_shape)) {
    case AttrResult::kAbsent: return "attribute 'kernel_shape' is required";
    case AttrResult::kWrongType: return "attribute 'kernel_shape' has the wrong type";
    case AttrResult::kFound: break;
  }
  std::string error = ReadOptionalAttr(info, "strides", attrs.strides);
  if (error.empty()) error = ReadOptionalAttr(info, "pads", attrs.pads);
  if (error.empty()) error = ReadOptionalAttr(info, "dilations", attrs.dilations);
  if (error.empty()) error = ReadOptionalAttr(info, "group", attrs.group);
  std::string auto_pad = "NOTSET";
  if (error.empty()) error = ReadOptionalAttr(info, "auto_pad", auto_pad);
  if (!error.empty()) return error;

  if (auto_pad == "NOTSET" || auto_pad.empty()) {
    attrs.auto_pad = AutoPad::kNotSet;
  } else if (auto_pad == "SAME_UPPER") {
    attrs.auto_pad = AutoPad::kSameUpper;
  } else if (auto_pad == "SAME_LOWER") {
    attrs.auto_pad = AutoPad::kSameLower;
  } else if (auto_pad == "VALID") {
    attrs.auto_pad = AutoPad::kValid;
  } else {
    return "attribute 'auto_pad' must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, got '" + auto_pad + "'";
  }
  if (attrs.kernel_shape.size() != 2 || attrs.kernel_shape[0] <= 0 || attrs.kernel_shape[1] <= 0) {
    return "attribute 'kernel_shape' must be two positive ints [KH, KW], got " + ShapeString(attrs.kernel_shape);
  }
  if (attrs.strides.size() != 2 || attrs.strides[0] <= 0 || attrs.strides[1] <= 0) {
    return "attribute 'strides' must be two positive ints, got " + ShapeString(attrs.strides);
  }
  if (attrs.dilations.size() != 2 || attrs.dilations[0] <= 0 || attrs.dilations[1] <= 0) {
    return "attribute 'dilations' must be two positive ints, got " + ShapeString(attrs.dilations);
  }
  if (attrs.pads.size() != 4 || *std::min_element(attrs.pads.begin(), attrs.pads.end()) < 0) {
    return "attribute 'pads' must be four non-negative ints, got " + ShapeString(attrs.pads);
  }
  if (attrs.group <= 0) return StrCat("attribute 'group' must be positive, got ", attrs.group);
  return {};
}

// One spatial axis: the output size and the padding before it; an error message when the kernel
// does not fit.
std::string ResolveAxis(const char* axis, AutoPad auto_pad, int64_t in, int64_t kernel, int64_t stride,
                        int64_t dilation, int64_t pad_begin, int64_t pad_end, int64_t& out, int64_t& pad_out) {
  const int64_t extent = dilation * (kernel - 1) + 1;
  if (auto_pad == AutoPad::kSameUpper || auto_pad == AutoPad::kSameLower) {
    out = (in + stride - 1) / stride;
    const int64_t total = std::max<int64_t>(0, (out - 1) * stride + extent - in);
    pad_out = auto_pad == AutoPad::kSameUpper ? total / 2 : total - total / 2;
    return {};
  }
  if (auto_pad == AutoPad::kValid) pad_begin = pad_end = 0;
  const int64_t padded = in + pad_begin + pad_end;
  if (padded < extent) {
    return StrCat("output ", axis, " would be negative: input ", in, " + pads ", pad_begin + pad_end,
                  " is smaller than the dilated kernel ", extent);
  }
  out = (padded - extent) / stride + 1;
  pad_out = pad_begin;
  return {};
}

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
    return target;
  }
};

}  // namespace

template <typename T>
Conv2dCompressKernel<T>::Conv2dCompressKernel(const OrtApi* /*api*/, const OrtKernelInfo* info) noexcept {
  try {
    init_error_ = ReadConvAttributes(info, attrs_);
    isa_ = SelectCpuIsa();
    if (init_error_.empty()) packed_ = PackConstantWeight<T>(info);
  } catch (const std::exception& e) {
    init_error_ = e.what();
  } catch (...) {
    init_error_ = "unknown error while reading attributes";
  }
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
  const std::vector<int64_t>& x_shape = x.Shape();
  if (x_shape.size() != 4) {
    return InvalidArgument(kOpName, "X must have rank 4 [N, C, H, W], got shape " + ShapeString(x_shape));
  }
  CompressedWeightShape weight;
  ONNXSPARSE_RETURN_IF_ERROR(CheckCompressedWeight(kOpName, values.Shape(), index.Shape(), weight));

  ConvGeometry geo{};
  geo.batch = x_shape[0];
  geo.channels = x_shape[1];
  geo.height = x_shape[2];
  geo.width = x_shape[3];
  geo.out_channels = weight.rows;
  const int64_t taps = attrs_.kernel_shape[0] * attrs_.kernel_shape[1];
  if (weight.k % taps != 0) {
    return InvalidArgument(kOpName, StrCat("K=", weight.k, " of the compressed weight is not a multiple of KH*KW=", taps));
  }
  geo.channels_per_group = weight.k / taps;
  if (geo.channels_per_group * attrs_.group != geo.channels) {
    return InvalidArgument(kOpName, StrCat("X has C=", geo.channels, " channels but the weight expects group * C/group = ",
                                           attrs_.group, " * ", geo.channels_per_group));
  }
  if (geo.out_channels % attrs_.group != 0) {
    return InvalidArgument(kOpName, StrCat("OC=", geo.out_channels, " is not divisible by group=", attrs_.group));
  }
  geo.out_channels_per_group = geo.out_channels / attrs_.group;
  const T* bias_data = nullptr;
  if (bias != nullptr) {
    if (bias->Shape() != std::vector<int64_t>{weight.rows}) {
      return InvalidArgument(kOpName, StrCat("B must have shape [", weight.rows, "], got ", ShapeString(bias->Shape())));
    }
    bias_data = bias->Data();
  }
  std::string error = ResolveAxis("height", attrs_.auto_pad, geo.height, attrs_.kernel_shape[0], attrs_.strides[0],
                                  attrs_.dilations[0], attrs_.pads[0], attrs_.pads[2], geo.out_height, geo.pad_top);
  if (error.empty()) {
    error = ResolveAxis("width", attrs_.auto_pad, geo.width, attrs_.kernel_shape[1], attrs_.strides[1],
                        attrs_.dilations[1], attrs_.pads[1], attrs_.pads[3], geo.out_width, geo.pad_left);
  }
  if (!error.empty()) return InvalidArgument(kOpName, error);

  T* y_data = y.Allocate({geo.batch, geo.out_channels, geo.out_height, geo.out_width});

  if (packed_ != nullptr && packed_->rows == weight.rows && packed_->k == weight.k) {
    std::vector<float> bias32;
    if (bias_data != nullptr) {
      bias32.resize(static_cast<size_t>(weight.rows));
      for (int64_t n = 0; n < weight.rows; ++n) bias32[n] = ToFloat(bias_data[n]);
    }
    if (!FastConv<T>(context, FastKernels(isa_), *packed_, attrs_, geo, x.Data(),
                     bias_data != nullptr ? bias32.data() : nullptr, y_data)) {
      return RuntimeError(kOpName, "the convolution failed (out of memory?)");
    }
    return Ort::Status{nullptr};
  }

  ConvProblem<T> problem;
  problem.batches = geo.batch * attrs_.group;
  problem.m = geo.out_height * geo.out_width;
  problem.n = geo.out_channels_per_group;
  problem.k = weight.k;
  problem.attrs = &attrs_;
  problem.geo = geo;
  problem.x = x.Data();
  problem.values = values.Data();
  problem.index = index.Data();
  problem.bias = bias_data;
  problem.y = y_data;
  return SparseGemm<T>(context, kOpName, problem, 1.0f);
}

template struct Conv2dCompressKernel<float>;
template struct Conv2dCompressKernel<Ort::Float16_t>;
template struct Conv2dCompressKernel<Ort::BFloat16_t>;

}  // namespace onnxsparse::cpu
