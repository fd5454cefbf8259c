#include "cuda/qconv2d_compress.h"

#include <vector>

#include "common/status.h"
#include "cuda/cuda_utils.h"
#include "cuda/qop.h"

namespace onnxsparse::cuda {

QConv2dCompressCuda::QConv2dCompressCuda(const OrtKernelInfo* info, bool a_unsigned, QOutType out) noexcept
    : a_unsigned_(a_unsigned), out_(out) {
  init_error_ = CaptureInitError([&] {
    std::string error = ReadConvAttributes(info, attrs_);
    if (error.empty()) error = ReadQActivation(info, &relu_);
    runner_.Init(info, 3, 4);
    return error;
  });
}

Ort::Status QConv2dCompressCuda::Compute(OrtKernelContext* context) noexcept {
  return GuardCompute(kOpName, [&]() -> Ort::Status {
    if (!init_error_.empty()) return InvalidArgument(kOpName, init_error_);
    QInputs in;
    ONNXSPARSE_RETURN_IF_ERROR(ReadQInputs(kOpName, context, a_unsigned_, out_, &in));
    ConvGeometry geo;
    ONNXSPARSE_RETURN_IF_ERROR(
        ResolveConvGeometry(kOpName, attrs_, in.x_shape, in.values_shape, in.index_shape, nullptr, geo));
    const int64_t k = geo.k, oc = geo.out_channels, ocg = geo.out_channels_per_group;
    if (k > kQMaxReduction) {
      return InvalidArgument(kOpName, StrCat("K=", k, " is larger than ", kQMaxReduction,
                                             ", where the int32 accumulation is no longer exact"));
    }
    ONNXSPARSE_RETURN_IF_ERROR(CheckQPerChannel(kOpName, context, oc, &in));
    Ort::KernelContext ctx(context);
    Ort::UnownedValue y = ctx.GetOutput(0, {geo.batch, oc, geo.out_height, geo.out_width});
    const int64_t hw = geo.out_height * geo.out_width;
    const int64_t pixels = geo.batch * hw;
    if (pixels == 0 || oc == 0) return Ort::Status{nullptr};
    cudaStream_t stream = ComputeStream(context);
    ScopedDevice device(runner_.Device(stream));  // the session's device, not the thread's
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOpName, device.error());
    const int32_t* wsum = nullptr;
    ONNXSPARSE_RETURN_IF_ERROR(runner_.Prepare(kOpName, stream, in.values, in.index, oc, k, &wsum));

    // Scratch: the im2col matrix of one group [pixels, K], then the GEMM's.
    const size_t col_bytes = AlignUp(static_cast<size_t>(pixels * k));
    const size_t gemm_bytes = runner_.ScratchBytes(pixels, ocg, k);
    cudaError_t err = cudaSuccess;
    char* scratch = static_cast<char*>(StreamScratch(stream, col_bytes + gemm_bytes, &err));
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOpName, err);
    uint8_t* col = reinterpret_cast<uint8_t*>(scratch);
    const uint8_t* x = static_cast<const uint8_t*>(Ort::ConstValue(in.x).GetTensorRawData());
    const int64_t half_k = k / 2, index_stride = (k + 7) / 8;
    for (int64_t g = 0; g < attrs_.group; ++g) {
      QIm2colArgs a;
      a.batch = geo.batch, a.channels = geo.channels, a.height = geo.height, a.width = geo.width;
      a.channel_offset = g * geo.channels_per_group, a.group_channels = geo.channels_per_group;
      a.kernel_h = attrs_.kernel_shape[0], a.kernel_w = attrs_.kernel_shape[1];
      a.stride_h = attrs_.strides[0], a.stride_w = attrs_.strides[1];
      a.pad_top = geo.pad_top, a.pad_left = geo.pad_left;
      a.dilation_h = attrs_.dilations[0], a.dilation_w = attrs_.dilations[1];
      a.out_h = geo.out_height, a.out_w = geo.out_width;
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(
          kOpName, LaunchQIm2col(x, a, static_cast<const uint8_t*>(in.epi.a_zero_point), col, stream));
      QGemmArgs args;
      args.x = col;
      args.m = pixels;
      args.k = k;
      args.n = ocg;
      args.values = in.values + g * ocg * half_k;
      args.index = in.index + g * ocg * index_stride;
      args.epi = in.epi;
      args.epi.wsum = wsum;
      args.epi.relu = relu_;
      args.epi.y = y.GetTensorMutableRawData();
      args.epi.ldy = oc;
      args.epi.hw = hw;
      args.epi.n_offset = g * ocg;
      ONNXSPARSE_RETURN_IF_ERROR(
          runner_.Run(kOpName, stream, static_cast<int>(g), args, gemm_bytes > 0 ? scratch + col_bytes : nullptr));
    }
    return Ort::Status{nullptr};
  });
}

}  // namespace onnxsparse::cuda
