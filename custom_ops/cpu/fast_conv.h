// The fast Conv2dCompress over a PackedWeight (rows = OC, all groups): per (image, group), tiles
// of output pixels times the group's features with the Cols kernel (fast_kernels.h), which reads
// NCHW's layout as it is: a channel's output pixels are contiguous, so C = Y needs no transpose,
// and the panel's rows are input-channel rows. The panel is built one cache block of K at a time
// for a tile of pixels, in the weight's (kh, kw, c) order, and reused by all the item's features:
// for a 1x1 convolution with stride 1 and no padding it is a plain copy of channel rows into
// aligned strips (no index arithmetic), otherwise im2col with padding, strides and dilations.
#pragma once
#include <cstdint>

#include "common/activation.h"
#include "common/ort_api.h"
#include "cpu/conv2d_compress.h"
#include "cpu/fast_kernels.h"

namespace onnxsparse::cpu {

// bias: fp32 [OC] or null; act: the fused activation or null, applied in fp32 by each item to its
// finished block of Y. Returns false when a task failed (out of memory).
template <typename T>
bool FastConv(OrtKernelContext* context, const FastKernelSet& kernels, const PackedWeight& w,
              const ConvAttributes& attrs, const ConvGeometry& geo, const T* x, const float* bias, T* y,
              const Activation* act = nullptr);

}  // namespace onnxsparse::cpu
