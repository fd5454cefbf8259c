#include "cuda/compress_op.h"

#include <vector>

#include "common/op_shapes.h"
#include "common/status.h"
#include "cuda/compress_op_impl.cuh"

namespace onnxsparse::cuda {

namespace {
constexpr const char* kOp = "CompressOp";
}

template <typename OrtT>
CompressOpCuda<OrtT>::CompressOpCuda(const OrtApi*, const OrtKernelInfo* info) noexcept {
  init_error_ = CaptureInitError([&] { return ReadWeightLayout(info, layout_); });
  device_ = KernelDevice(info);
}

template <typename OrtT>
Ort::Status CompressOpCuda<OrtT>::Compute(OrtKernelContext* context, const Ort::Custom::Tensor<OrtT>& weight,
                                         Ort::Custom::Tensor<OrtT>& values, Ort::Custom::Tensor<uint8_t>& index) {
  return GuardCompute(kOp, [&]() -> Ort::Status {
    using T = DeviceType<OrtT>;
    if (!init_error_.empty()) return InvalidArgument(kOp, init_error_);
    CompressShape shape;
    ONNXSPARSE_RETURN_IF_ERROR(ResolveCompressShape(kOp, layout_, weight.Shape(), shape));
    CompressArgs a;
    switch (layout_) {
      case onnxsparse::WeightLayout::kKN: a.layout = cuda::WeightLayout::kKN; break;
      case onnxsparse::WeightLayout::kNK: a.layout = cuda::WeightLayout::kNK; break;
      case onnxsparse::WeightLayout::kOIHW: a.layout = cuda::WeightLayout::kOIHW; break;
    }
    a.rows = shape.rows;
    a.k = shape.k;
    a.channels = shape.channels, a.kernel_h = shape.kernel_h, a.kernel_w = shape.kernel_w;
    T* out_values = reinterpret_cast<T*>(values.Allocate({a.rows, a.k / 2}));
    uint8_t* out_index = index.Allocate({a.rows, (a.k + 7) / 8});
    if (a.rows * a.k == 0) return Ort::Status{nullptr};
    cudaStream_t stream = ComputeStream(context);
    ScopedDevice device(device_ >= 0 ? device_ : StreamDevice(stream, device_));  // the session's device, not the thread's
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, device.error());
    if (bad_groups_.get() == nullptr) ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, bad_groups_.Allocate(sizeof(unsigned int)));
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, cudaMemsetAsync(bad_groups_.get(), 0, sizeof(unsigned int), stream));
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, LaunchCompress<T>(reinterpret_cast<const T*>(weight.Data()), a, out_values,
                                                           out_index, bad_groups_.as<unsigned int>(), stream));
    // Checking 2:4 needs the count on the host. Under CUDA-graph capture no host sync is allowed:
    // the check then runs only in the uncaptured warm-up runs.
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, cudaStreamIsCapturing(stream, &capture));
    if (capture == cudaStreamCaptureStatusNone) {
      unsigned int bad = 0;
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, cudaMemcpyAsync(&bad, bad_groups_.get(), sizeof(bad), cudaMemcpyDeviceToHost, stream));
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, cudaStreamSynchronize(stream));
      if (bad != 0) {
        return InvalidArgument(kOp, StrCat(bad, " of ", a.rows * (a.k / 4), " groups have more than 2 non-zeros"));
      }
    }
    return Ort::Status{nullptr};
  });
}

template struct CompressOpCuda<float>;
template struct CompressOpCuda<Ort::Float16_t>;
template struct CompressOpCuda<Ort::BFloat16_t>;

}  // namespace onnxsparse::cuda
