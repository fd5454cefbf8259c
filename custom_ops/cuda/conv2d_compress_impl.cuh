// Launcher of Conv2dCompress's im2col (host code includes this header only).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/activation.h"

namespace onnxsparse::cuda {

struct Im2colArgs {
  int64_t batch = 0, height = 0, width = 0, channels = 0;  // the NHWC input
  int64_t channel_offset = 0, group_channels = 0;         // this group's channels
  int64_t kernel_h = 0, kernel_w = 0, stride_h = 1, stride_w = 1;
  int64_t pad_top = 0, pad_left = 0, dilation_h = 1, dilation_w = 1;
  int64_t out_h = 0, out_w = 0;
};

// col[(b*OH + oh)*OW + ow, (kh*KW + kw)*Cg + c] = nhwc[b, ih, iw, channel_offset + c] (0 outside),
// the (kh, kw, c) order of SPEC's Conv weight rows. With flag (device, cleared by the caller) set to
// 1 when a copied value is NaN or infinite.
template <typename T>
cudaError_t LaunchIm2colNhwc(const T* nhwc, const Im2colArgs& args, T* col, unsigned int* flag, cudaStream_t stream);

}  // namespace onnxsparse::cuda

namespace onnxsparse::cuda {

// The per-image (NCHW) form: col[b, (kh*KW + kw)*C + c, p] = x[b, c, ih, iw] for output pixel
// p = oh*OW + ow < OH*OW (0 outside the input and for p in [OH*OW, cols)): each image's im2col
// matrix [K, cols], row-major, cols >= OH*OW. args.channels is C (group 1); args.batch images.
// With flag (device, cleared by the caller) set to 1 when a copied value is NaN or infinite.
template <typename T>
cudaError_t LaunchIm2colNchw(const T* x, const Im2colArgs& args, int64_t cols, T* col, unsigned int* flag,
                             cudaStream_t stream);

// *flag = 1 when x[0..count) holds a NaN or an infinity (flag cleared by the caller).
template <typename T>
cudaError_t LaunchScanNonFiniteFlat(const T* x, int64_t count, unsigned int* flag, cudaStream_t stream);

// y[b, o, p] = act(src[b, o, p] + bias[o]) for p < hw, src's rows `ld` apart (ld >= hw; src may be
// y when ld == hw); bias may be null. T: float, __half, __nv_bfloat16.
template <typename T>
cudaError_t LaunchConvEpilogueNchw(const T* src, int64_t ld, T* y, int64_t batch, int64_t oc, int64_t hw, const T* bias,
                                   const Activation& act, cudaStream_t stream);

// NaN/Inf like the dense Conv, in the per-image form: where *flag is set, each output column
// (b, p < hw) whose im2col column col[b, :, p] (rows `cols` apart, k rows) holds a NaN or an
// infinity is recomputed as the dense op computes it, pruned zeros included (0 * Inf = NaN):
// y[b, o, p] = act(sum_kk W[o, kk] * col[b, kk, p] + bias[o]), W decoded from SPEC's form.
// Exits at once when the flag is clear (the usual case), so CUDA graphs capture it.
template <typename T>
cudaError_t LaunchConvNonFiniteFixNchw(const T* col, int64_t k, int64_t cols, const T* values, const uint8_t* index,
                                       const T* bias, const Activation& act, int64_t batch, int64_t oc, int64_t hw,
                                       T* y, const unsigned int* flag, cudaStream_t stream);

}  // namespace onnxsparse::cuda
