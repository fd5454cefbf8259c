// The fast Conv2dCompress over a PackedWeight (rows = OC, all groups): per (image, group), tiles
// of output pixels times the group's features with the Cols kernel (fast_kernels.h), reading
// - a 1x1 convolution with stride 1 and no padding straight from X (NCHW: a channel's pixels are
//   a contiguous panel row), and
// - any other from an im2col panel in the weight's (kh, kw, c) order, built one cache block of K
//   at a time for a tile of pixels and reused by all the features of the item.
#pragma once
#include <cstdint>

#include "common/ort_api.h"
#include "cpu/conv2d_compress.h"
#include "cpu/fast_kernels.h"

namespace onnxsparse::cpu {

// bias: fp32 [OC] or null. Returns false when a task failed (out of memory).
template <typename T>
bool FastConv(OrtKernelContext* context, const FastKernelSet& kernels, const PackedWeight& w,
              const ConvAttributes& attrs, const ConvGeometry& geo, const T* x, const float* bias, T* y);

}  // namespace onnxsparse::cpu
