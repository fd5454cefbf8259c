#include "cpu/qconv2d_compress.h"

#include <cstring>
#include <vector>

#include "common/status.h"

namespace onnxsparse::cpu {

namespace {

int64_t ReadGroup(const OrtKernelInfo* info) {
  int64_t group = 1;
  ReadOptionalAttr(info, "group", group);
  return group;
}

// X[image] of group g (channels cg, uint8 after the +128 shift for int8) as A_u rows [OH*OW][lda]
// in (kh, kw, c) order; pixels outside the padded input read `pad`.
void Im2Col(const uint8_t* x, const ConvAttributes& attrs, const ConvGeometry& geo, bool flip, uint8_t pad,
            std::vector<uint8_t>& hwc, uint8_t* dst, int64_t lda) {
  const int64_t cg = geo.channels_per_group, h = geo.height, wd = geo.width, plane = h * wd;
  hwc.resize(static_cast<size_t>(plane * cg));
  const uint8_t mask = flip ? 0x80 : 0x00;
  for (int64_t c = 0; c < cg; ++c) {
    const uint8_t* src = x + c * plane;
    for (int64_t p = 0; p < plane; ++p) hwc[p * cg + c] = static_cast<uint8_t>(src[p] ^ mask);
  }
  const int64_t kh_size = attrs.kernel_shape[0], kw_size = attrs.kernel_shape[1];
  const int64_t k = kh_size * kw_size * cg;
  for (int64_t oh = 0; oh < geo.out_height; ++oh) {
    for (int64_t ow = 0; ow < geo.out_width; ++ow) {
      uint8_t* row = dst + (oh * geo.out_width + ow) * lda;
      for (int64_t kh = 0; kh < kh_size; ++kh) {
        const int64_t ih = oh * attrs.strides[0] - geo.pad_top + kh * attrs.dilations[0];
        for (int64_t kw = 0; kw < kw_size; ++kw) {
          const int64_t iw = ow * attrs.strides[1] - geo.pad_left + kw * attrs.dilations[1];
          uint8_t* out = row + (kh * kw_size + kw) * cg;
          if (ih < 0 || ih >= h || iw < 0 || iw >= wd) {
            std::memset(out, pad, static_cast<size_t>(cg));
          } else {
            std::memcpy(out, hwc.data() + (ih * wd + iw) * cg, static_cast<size_t>(cg));
          }
        }
      }
      std::memset(row + k, 0, static_cast<size_t>(lda - k));
    }
  }
}

}  // namespace

QConv2dCompressKernel::QConv2dCompressKernel(const OrtKernelInfo* info, Int8Types types) noexcept
    : Int8KernelBase(kOpName, info, types, ReadGroup(info)) {
  attr_error_ = CaptureInitError([&] { return ReadConvAttributes(info, attrs_); });
}

Ort::Status QConv2dCompressKernel::Compute(OrtKernelContext* context) noexcept {
  return GuardCompute(kOpName, [&]() -> Ort::Status {
    if (!attr_error_.empty()) return InvalidArgument(kOpName, attr_error_);
    if (!init_error_.empty()) return InvalidArgument(kOpName, init_error_);
    return ComputeImpl(context);
  });
}

Ort::Status QConv2dCompressKernel::ComputeImpl(OrtKernelContext* context) {
  for (size_t i : {size_t{0}, size_t{3}, size_t{4}}) {
    if (Int8Input(context, i) == nullptr) return InvalidArgument(kOpName, StrCat("input ", i, " is missing"));
  }
  Ort::ConstValue x_value(Int8Input(context, 0));
  Ort::ConstValue values(Int8Input(context, 3)), index(Int8Input(context, 4));
  const std::vector<int64_t> x_shape = x_value.GetTensorTypeAndShapeInfo().GetShape();
  ConvGeometry geo;
  ONNXSPARSE_RETURN_IF_ERROR(ResolveConvGeometry(kOpName, attrs_, x_shape,
                                                 values.GetTensorTypeAndShapeInfo().GetShape(),
                                                 index.GetTensorTypeAndShapeInfo().GetShape(), nullptr, geo));
  Int8CallTerms terms;
  ONNXSPARSE_RETURN_IF_ERROR(PrepareCall(context, geo.out_channels, geo.k, terms));

  Ort::KernelContext ctx(context);
  auto y_value = ctx.GetOutput(0, {geo.batch, geo.out_channels, geo.out_height, geo.out_width});
  uint8_t* y = static_cast<uint8_t*>(y_value.GetTensorMutableRawData());
  const int64_t pixels = geo.out_height * geo.out_width;
  if (geo.batch == 0 || geo.out_channels == 0 || pixels == 0) return Ort::Status{nullptr};

  const Int8PackedWeight& w = *terms.weight;
  const int64_t lda = Int8RowBytes(w);
  const int64_t out_bytes = Int8OutBytes(terms.epilogue.out);
  const uint8_t* x = static_cast<const uint8_t*>(x_value.GetTensorRawData());
  const int64_t plane = geo.height * geo.width;
  std::vector<uint8_t> hwc, a_rows(static_cast<size_t>(pixels * lda));
  const Int8KernelSet& kernels = Int8Kernels(isa_);
  for (int64_t image = 0; image < geo.batch; ++image) {
    for (int64_t g = 0; g < attrs_.group; ++g) {
      Im2Col(x + (image * geo.channels + g * geo.channels_per_group) * plane, attrs_, geo, terms.flip, terms.pad_byte,
             hwc, a_rows.data(), lda);
      uint8_t* y_group = y + (image * geo.out_channels + g * geo.out_channels_per_group) * pixels * out_bytes;
      if (!RunInt8Gemm(context, kernels, w, g, a_rows.data(), lda, pixels, terms.epilogue, y_group, 1, pixels)) {
        return RuntimeError(kOpName, "the convolution failed (out of memory?)");
      }
    }
  }
  return Ort::Status{nullptr};
}

}  // namespace onnxsparse::cpu
