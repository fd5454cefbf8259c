// Launcher of Conv2dCompress's im2col (host code includes this header only).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace onnxsparse::cuda {

struct Im2colArgs {
  int64_t batch = 0, height = 0, width = 0, channels = 0;  // the NHWC input
  int64_t channel_offset = 0, group_channels = 0;         // this group's channels
  int64_t kernel_h = 0, kernel_w = 0, stride_h = 1, stride_w = 1;
  int64_t pad_top = 0, pad_left = 0, dilation_h = 1, dilation_w = 1;
  int64_t out_h = 0, out_w = 0;
};

// col[(b*OH + oh)*OW + ow, (kh*KW + kw)*Cg + c] = nhwc[b, ih, iw, channel_offset + c] (0 outside),
// the (kh, kw, c) order of SPEC's Conv weight rows.
template <typename T>
cudaError_t LaunchIm2colNhwc(const T* nhwc, const Im2colArgs& args, T* col, cudaStream_t stream);

}  // namespace onnxsparse::cuda
