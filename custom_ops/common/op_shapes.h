// The ops' host-side shape contract (DEVELOPERS.md "The ops", SPEC.md), written once for the CPU
// and the CUDA kernels: attribute reading (in the kernel constructor, through common/attributes.h)
// and the checks of input shapes against each other at run time, which give the output shape and
// the problem sizes. Errors are InvalidArgument statuses naming the op; attribute errors are plain
// messages, kept by the constructor and returned by every Compute (a constructor must not throw).
// Header-only: the build compiles register.cc, cpu/*.cc and cuda/* only.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "common/attributes.h"
#include "common/ort_api.h"
#include "common/sparse_format.h"
#include "common/status.h"

namespace onnxsparse {

inline std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// ---------------------------------------------------------------------------------------------
// Sizes come from the model (attributes) and from the inputs' shapes, and an empty tensor may have
// any other dimension as large as int64 allows: every product or sum of them is checked here, once,
// so that the kernels can compute offsets in int64 without overflow.

// The largest reduction length K accepted (K/2, ceil(K/8) and K + padding rows then stay far from
// overflow).
constexpr int64_t kMaxReduction = int64_t{1} << 60;

// a * b and a + b of non-negative sizes; false when the result does not fit in int64.
inline bool CheckedMul(int64_t a, int64_t b, int64_t& out) { return !__builtin_mul_overflow(a, b, &out); }
inline bool CheckedAdd(int64_t a, int64_t b, int64_t& out) { return !__builtin_add_overflow(a, b, &out); }

// A shape whose non-zero dimensions multiply to at most INT64_MAX: then the product of any subset
// of its dimensions (an element count, a plane, an offset inside it) fits in int64, empty or not.
inline Ort::Status CheckShapeFits(const char* op, const char* name, const std::vector<int64_t>& shape) {
  int64_t product = 1;
  for (int64_t d : shape) {
    if (d < 0) return InvalidArgument(op, StrCat(name, " has a negative dimension: ", ShapeString(shape)));
    if (d != 0 && !CheckedMul(product, d, product)) {
      return InvalidArgument(op, StrCat(name, " of shape ", ShapeString(shape),
                                        " is too large (its dimensions multiply past 2^63 - 1)"));
    }
  }
  return Ort::Status{nullptr};
}

// The number of elements of a shape that passed CheckShapeFits.
inline int64_t ElementCount(const std::vector<int64_t>& shape) {
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  return count;
}

// ---------------------------------------------------------------------------------------------
// SPEC's compressed pair: values [rows, K/2], index [rows, ceil(K/8)], K % 4 == 0.

struct CompressedWeightShape {
  int64_t rows = 0;  // output features: N or OC
  int64_t k = 0;     // reduction length, 2 * values.shape[1]
};

inline Ort::Status CheckCompressedWeight(const char* op, const std::vector<int64_t>& values_shape,
                                         const std::vector<int64_t>& index_shape, CompressedWeightShape& out) {
  if (values_shape.size() != 2) {
    return InvalidArgument(op, "values must have rank 2 [rows, K/2], got shape " + ShapeString(values_shape));
  }
  if (index_shape.size() != 2) {
    return InvalidArgument(op, "index must have rank 2 [rows, ceil(K/8)], got shape " + ShapeString(index_shape));
  }
  ONNXSPARSE_RETURN_IF_ERROR(CheckShapeFits(op, "values", values_shape));
  ONNXSPARSE_RETURN_IF_ERROR(CheckShapeFits(op, "index", index_shape));
  if (values_shape[1] > kMaxReduction / 2) {
    return InvalidArgument(op, StrCat("K = 2 * values.shape[1] = 2 * ", values_shape[1], " is too large"));
  }
  out.rows = values_shape[0];
  out.k = 2 * values_shape[1];
  if (out.k % 4 != 0) {
    return InvalidArgument(op, StrCat("K=", out.k, " (2 * values.shape[1]) is not a multiple of 4"));
  }
  if (index_shape[0] != out.rows || index_shape[1] != IndexBytesPerRow(out.k)) {
    return InvalidArgument(op, StrCat("index has shape ", ShapeString(index_shape), ", expected [", out.rows, ", ",
                                      IndexBytesPerRow(out.k), "] for values of shape ", ShapeString(values_shape)));
  }
  return Ort::Status{nullptr};
}

// An optional per-feature input (MatMulCompress's bias, Conv2dCompress's B) must be exactly [rows].
inline Ort::Status CheckBias(const char* op, const char* name, const std::vector<int64_t>* bias_shape, int64_t rows) {
  if (bias_shape != nullptr && *bias_shape != std::vector<int64_t>{rows}) {
    return InvalidArgument(op, StrCat(name, " must have shape [", rows, "], got ", ShapeString(*bias_shape)));
  }
  return Ort::Status{nullptr};
}

// ---------------------------------------------------------------------------------------------
// CompressOp: a dense weight in its ONNX layout -> the pair above.

enum class WeightLayout { kKN, kNK, kOIHW };

// Reads the required attribute `layout`; returns an error message, empty when fine.
inline std::string ReadWeightLayout(const OrtKernelInfo* info, WeightLayout& out) {
  std::string layout;
  switch (ReadAttr(info, "layout", layout)) {
    case AttrResult::kAbsent: return "attribute 'layout' is required (\"kn\", \"nk\" or \"oihw\")";
    case AttrResult::kWrongType: return "attribute 'layout' must be a string";
    case AttrResult::kFound: break;
  }
  if (layout == "kn") {
    out = WeightLayout::kKN;
  } else if (layout == "nk") {
    out = WeightLayout::kNK;
  } else if (layout == "oihw") {
    out = WeightLayout::kOIHW;
  } else {
    return "attribute 'layout' must be \"kn\", \"nk\" or \"oihw\", got \"" + layout + "\"";
  }
  return {};
}

// The weight as a [rows, K] matrix; the output shapes are [rows, K/2] and [rows, ceil(K/8)].
struct CompressShape {
  int64_t rows = 0, k = 0;
  int64_t channels = 0, kernel_h = 1, kernel_w = 1;  // oihw: C/group, KH, KW
};

inline Ort::Status ResolveCompressShape(const char* op, WeightLayout layout, const std::vector<int64_t>& shape,
                                        CompressShape& out) {
  if (layout == WeightLayout::kOIHW) {
    if (shape.size() != 4) {
      return InvalidArgument(op, "an \"oihw\" weight must have rank 4, got shape " + ShapeString(shape));
    }
    // K = C/group * KH * KW may overflow when OC is 0 (an empty weight): checked like the shape.
    ONNXSPARSE_RETURN_IF_ERROR(CheckShapeFits(op, "the weight", {shape[1], shape[2], shape[3]}));
    out.rows = shape[0];
    out.channels = shape[1];
    out.kernel_h = shape[2];
    out.kernel_w = shape[3];
    out.k = shape[1] * shape[2] * shape[3];
  } else {
    if (shape.size() != 2) {
      return InvalidArgument(op, "a \"kn\" or \"nk\" weight must have rank 2, got shape " + ShapeString(shape));
    }
    const bool kn = layout == WeightLayout::kKN;
    out.rows = kn ? shape[1] : shape[0];
    out.k = kn ? shape[0] : shape[1];
  }
  ONNXSPARSE_RETURN_IF_ERROR(CheckShapeFits(op, "the weight", shape));
  if (out.k > kMaxReduction) return InvalidArgument(op, StrCat("K=", out.k, " is too large"));
  if (out.k % 4 != 0) return InvalidArgument(op, StrCat("K=", out.k, " is not a multiple of 4"));
  return Ort::Status{nullptr};
}

// ---------------------------------------------------------------------------------------------
// MatMulCompress: Y = alpha * (A @ W) + bias.

struct MatMulAttributes {
  float alpha = 1.0f;
  bool trans_a = false;
};

// Reads alpha and transA; returns an error message, empty when fine.
inline std::string ReadMatMulAttributes(const OrtKernelInfo* info, MatMulAttributes& out) {
  std::string error = ReadOptionalAttr(info, "alpha", out.alpha);
  int64_t trans_a = 0;
  if (error.empty()) error = ReadOptionalAttr(info, "transA", trans_a);
  if (error.empty() && trans_a != 0 && trans_a != 1) error = StrCat("attribute 'transA' must be 0 or 1, got ", trans_a);
  out.trans_a = trans_a == 1;
  return error;
}

// One call's sizes: A is [m, k] (or [k, m] with transA), W [k, n], Y y_shape.
struct MatMulShape {
  int64_t m = 1, k = 0, n = 0;
  std::vector<int64_t> y_shape;
};

// A [..., K] (rank 1 to 4) or, with transA, [K, M]; the pair [N, K/2], [N, ceil(K/8)]; bias [N]
// (bias_shape null when absent).
inline Ort::Status ResolveMatMulShape(const char* op, bool trans_a, const std::vector<int64_t>& a_shape,
                                      const std::vector<int64_t>& values_shape, const std::vector<int64_t>& index_shape,
                                      const std::vector<int64_t>* bias_shape, MatMulShape& out) {
  const size_t rank = a_shape.size();
  if (rank < 1 || rank > 4) return InvalidArgument(op, "A must have rank 1 to 4, got shape " + ShapeString(a_shape));
  ONNXSPARSE_RETURN_IF_ERROR(CheckShapeFits(op, "A", a_shape));
  if (trans_a && rank != 2) {
    return InvalidArgument(op, "with transA=1, A must have rank 2, got shape " + ShapeString(a_shape));
  }
  out.m = 1;
  out.y_shape.clear();
  if (trans_a) {
    out.k = a_shape[0];
    out.m = a_shape[1];
    out.y_shape = {out.m};
  } else {
    out.k = a_shape.back();
    for (size_t d = 0; d + 1 < rank; ++d) {
      out.m *= a_shape[d];
      out.y_shape.push_back(a_shape[d]);
    }
  }
  CompressedWeightShape weight;
  ONNXSPARSE_RETURN_IF_ERROR(CheckCompressedWeight(op, values_shape, index_shape, weight));
  if (weight.k != out.k) {
    return InvalidArgument(op, StrCat("K of A is ", out.k, " but values of shape ", ShapeString(values_shape),
                                      " encode K=", weight.k, " (K = 2 * values.shape[1])"));
  }
  ONNXSPARSE_RETURN_IF_ERROR(CheckBias(op, "bias", bias_shape, weight.rows));
  out.n = weight.rows;
  out.y_shape.push_back(out.n);
  ONNXSPARSE_RETURN_IF_ERROR(CheckShapeFits(op, "the output Y", out.y_shape));
  return Ort::Status{nullptr};
}

// ---------------------------------------------------------------------------------------------
// Conv2dCompress: ONNX Conv on NCHW, weight [OC, C/group, KH, KW] as the pair with
// K = KH*KW*C/group in (kh, kw, c) order.

enum class AutoPad { kNotSet, kSameUpper, kSameLower, kValid };

// Conv's attributes, read once when the kernel is created.
struct ConvAttributes {
  std::vector<int64_t> kernel_shape;      // [KH, KW], required
  std::vector<int64_t> strides{1, 1};
  std::vector<int64_t> pads{0, 0, 0, 0};  // h_begin, w_begin, h_end, w_end
  std::vector<int64_t> dilations{1, 1};
  int64_t group = 1;
  AutoPad auto_pad = AutoPad::kNotSet;
};

// Conv2dCompress's attribute `layout`: "NCHW" (default, ONNX Conv's) or "NHWC" (input [N, H, W, C],
// output [N, OH, OW, OC]: what the compiler's NHWC conv chains write, docs/ops.md). *nhwc says which;
// returns an error message, empty when fine.
inline std::string ReadConvLayout(const OrtKernelInfo* info, bool* nhwc) {
  std::string layout = "NCHW";
  std::string error = ReadOptionalAttr(info, "layout", layout);
  if (!error.empty()) return error;
  if (layout != "NCHW" && layout != "NHWC") return "attribute 'layout' must be \"NCHW\" or \"NHWC\", got \"" + layout + "\"";
  *nhwc = layout == "NHWC";
  return {};
}

// [N, H, W, C] -> [N, C, H, W] (any other rank unchanged: the geometry check reports it).
inline std::vector<int64_t> NchwShapeOfNhwc(const std::vector<int64_t>& shape) {
  if (shape.size() != 4) return shape;
  return {shape[0], shape[3], shape[1], shape[2]};
}

// Reads and checks Conv's attributes; returns an error message, empty when fine.
inline std::string ReadConvAttributes(const OrtKernelInfo* info, ConvAttributes& attrs) {
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

// The geometry of one call, once X's shape is known (auto_pad resolved).
struct ConvGeometry {
  int64_t batch, channels, height, width;       // X
  int64_t out_channels, out_height, out_width;  // Y
  int64_t pad_top, pad_left, pad_bottom, pad_right;
  int64_t channels_per_group, out_channels_per_group;
  int64_t k;                                    // KH*KW*C/group, the GEMM's reduction length
};

namespace detail {
// One spatial axis: the output size and the padding on each side; an error message when the
// kernel does not fit. Computed in 128 bits (every attribute may be as large as int64 allows);
// the result keeps in + pad_begin + pad_end within int64, which bounds every index the kernels
// form from it ((out - 1) * stride + dilated kernel <= padded input).
inline std::string ResolveConvAxis(const char* axis, AutoPad auto_pad, int64_t in, int64_t kernel, int64_t stride,
                                   int64_t dilation, int64_t pad_begin, int64_t pad_end, int64_t& out,
                                   int64_t& pad_begin_out, int64_t& pad_end_out) {
  using Wide = __int128;
  constexpr Wide kMax = INT64_MAX;
  const Wide extent = Wide{dilation} * (kernel - 1) + 1;
  if (extent > kMax) {
    return StrCat("the dilated kernel along the ", axis, " (dilation ", dilation, " * (kernel ", kernel,
                  " - 1) + 1) is too large");
  }
  Wide begin = pad_begin, end = pad_end, out_wide = 0;
  if (auto_pad == AutoPad::kSameUpper || auto_pad == AutoPad::kSameLower) {
    out_wide = in / stride + (in % stride != 0 ? 1 : 0);  // ceil(in / stride), no in + stride - 1
    const Wide needed = (out_wide - 1) * stride + extent - in;
    const Wide total = needed > 0 ? needed : 0;
    begin = auto_pad == AutoPad::kSameUpper ? total / 2 : total - total / 2;
    end = total - begin;
  } else if (auto_pad == AutoPad::kValid) {
    begin = end = 0;
  }
  const Wide padded = Wide{in} + begin + end;
  if (padded > kMax) {
    return StrCat("the ", axis, " of the input plus its padding (", in, " + ", static_cast<int64_t>(begin), " + ",
                  static_cast<int64_t>(end), ") is too large");
  }
  if (auto_pad != AutoPad::kSameUpper && auto_pad != AutoPad::kSameLower) {
    if (padded < extent) {
      return StrCat("output ", axis, " would be negative: input ", in, " + pads ", static_cast<int64_t>(begin + end),
                    " is smaller than the dilated kernel ", static_cast<int64_t>(extent));
    }
    out_wide = (padded - extent) / stride + 1;
  }
  out = static_cast<int64_t>(out_wide);
  pad_begin_out = static_cast<int64_t>(begin);
  pad_end_out = static_cast<int64_t>(end);
  return {};
}
}  // namespace detail

// X [N, C, H, W]; the pair [OC, K/2], [OC, ceil(K/8)] with K = KH*KW*C/group; B [OC] (bias_shape
// null when absent). Y is [batch, out_channels, out_height, out_width]. Every size is checked:
// X's and Y's non-zero dimensions multiply to at most INT64_MAX (CheckShapeFits), and so do the
// attributes' products (KH*KW, group * C/group, the padded input).
inline Ort::Status ResolveConvGeometry(const char* op, const ConvAttributes& attrs, const std::vector<int64_t>& x_shape,
                                       const std::vector<int64_t>& values_shape,
                                       const std::vector<int64_t>& index_shape,
                                       const std::vector<int64_t>* bias_shape, ConvGeometry& geo) {
  if (x_shape.size() != 4) {
    return InvalidArgument(op, "X must have rank 4 [N, C, H, W], got shape " + ShapeString(x_shape));
  }
  ONNXSPARSE_RETURN_IF_ERROR(CheckShapeFits(op, "X", x_shape));
  CompressedWeightShape weight;
  ONNXSPARSE_RETURN_IF_ERROR(CheckCompressedWeight(op, values_shape, index_shape, weight));
  geo = ConvGeometry{};
  geo.batch = x_shape[0];
  geo.channels = x_shape[1];
  geo.height = x_shape[2];
  geo.width = x_shape[3];
  geo.out_channels = weight.rows;
  geo.k = weight.k;
  int64_t taps = 0;
  if (!CheckedMul(attrs.kernel_shape[0], attrs.kernel_shape[1], taps)) {
    return InvalidArgument(op, "kernel_shape " + ShapeString(attrs.kernel_shape) + " is too large (KH*KW overflows)");
  }
  if (weight.k % taps != 0) {
    return InvalidArgument(op, StrCat("K=", weight.k, " of the compressed weight is not a multiple of KH*KW=", taps));
  }
  geo.channels_per_group = weight.k / taps;
  int64_t group_channels = 0;
  if (!CheckedMul(geo.channels_per_group, attrs.group, group_channels) || group_channels != geo.channels) {
    return InvalidArgument(op, StrCat("X has C=", geo.channels, " channels but the weight expects group * C/group = ",
                                      attrs.group, " * ", geo.channels_per_group));
  }
  if (geo.out_channels % attrs.group != 0) {
    return InvalidArgument(op, StrCat("OC=", geo.out_channels, " is not divisible by group=", attrs.group));
  }
  geo.out_channels_per_group = geo.out_channels / attrs.group;
  ONNXSPARSE_RETURN_IF_ERROR(CheckBias(op, "B", bias_shape, weight.rows));
  std::string error = detail::ResolveConvAxis("height", attrs.auto_pad, geo.height, attrs.kernel_shape[0],
                                              attrs.strides[0], attrs.dilations[0], attrs.pads[0], attrs.pads[2],
                                              geo.out_height, geo.pad_top, geo.pad_bottom);
  if (error.empty()) {
    error = detail::ResolveConvAxis("width", attrs.auto_pad, geo.width, attrs.kernel_shape[1], attrs.strides[1],
                                    attrs.dilations[1], attrs.pads[1], attrs.pads[3], geo.out_width, geo.pad_left,
                                    geo.pad_right);
  }
  if (!error.empty()) return InvalidArgument(op, error);
  return CheckShapeFits(op, "the output Y", {geo.batch, geo.out_channels, geo.out_height, geo.out_width});
}

}  // namespace onnxsparse
