#include "cuda/compress_op.h"

#include <vector>

#include "common/status.h"
#include "cuda/compress_op_impl.cuh"

namespace onnxsparse::cuda {

namespace {
constexpr const char* kOp = "CompressOp";
}

template <typename OrtT>
CompressOpCuda<OrtT>::CompressOpCuda(const OrtApi*, const OrtKernelInfo* info) {
  layout_ = AttributeString(info, "layout", "");
}

template <typename OrtT>
Ort::Status CompressOpCuda<OrtT>::Compute(OrtKernelContext* context, const Ort::Custom::Tensor<OrtT>& weight,
                                         Ort::Custom::Tensor<OrtT>& values, Ort::Custom::Tensor<uint8_t>& index) {
  return GuardCompute(kOp, [&]() -> Ort::Status {
    using T = DeviceType<OrtT>;
    const std::vector<int64_t>& s = weight.Shape();
    CompressArgs a;
    if (layout_ == "kn" || layout_ == "nk") {
      if (s.size() != 2) return InvalidArgument(kOp, StrCat("a '", layout_, "' weight must have rank 2, got ", s.size()));
      a.layout = layout_ == "kn" ? WeightLayout::kKN : WeightLayout::kNK;
      a.rows = layout_ == "kn" ? s[1] : s[0];
      a.k = layout_ == "kn" ? s[0] : s[1];
    } else if (layout_ == "oihw") {
      if (s.size() != 4) return InvalidArgument(kOp, StrCat("an 'oihw' weight must have rank 4, got ", s.size()));
      a.layout = WeightLayout::kOIHW;
      a.rows = s[0];
      a.channels = s[1], a.kernel_h = s[2], a.kernel_w = s[3];
      a.k = s[1] * s[2] * s[3];
    } else {
      return InvalidArgument(kOp, StrCat("layout must be 'kn', 'nk' or 'oihw', got '", layout_, "'"));
    }
    if (a.k % 4 != 0) return InvalidArgument(kOp, StrCat("K=", a.k, " is not a multiple of 4"));
    T* out_values = reinterpret_cast<T*>(values.Allocate({a.rows, a.k / 2}));
    uint8_t* out_index = index.Allocate({a.rows, (a.k + 7) / 8});
    if (a.rows * a.k == 0) return Ort::Status{nullptr};
    cudaStream_t stream = ComputeStream(context);
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
