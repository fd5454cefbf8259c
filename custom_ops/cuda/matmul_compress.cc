#include "cuda/matmul_compress.h"

#include <type_traits>
#include <vector>

#include "common/attributes.h"
#include "common/op_shapes.h"
#include "common/status.h"
#include "cuda/activation_impl.cuh"
#include "cuda/cuda_utils.h"
#include "cuda/sparse_gemm_impl.cuh"

namespace onnxsparse::cuda {

namespace {
constexpr const char* kOp = "MatMulCompress";
}

template <typename OrtT>
MatMulCompressCuda<OrtT>::MatMulCompressCuda(const OrtApi*, const OrtKernelInfo* info) noexcept {
  init_error_ = CaptureInitError([&] {
    std::string error = ReadMatMulAttributes(info, attrs_);
    if (error.empty()) error = ReadActivationAttributes(info, act_);
    runner_.Init(info, 1, 2, 3);
    if (error.empty() && !std::is_same_v<OrtT, float>) {
      runner_.PrepareCuSparseLt(info, HalfElementType<DeviceType<OrtT>>());
    }
    return error;
  });
}

template <typename OrtT>
Ort::Status MatMulCompressCuda<OrtT>::Compute(OrtKernelContext* context, const Ort::Custom::Tensor<OrtT>& a,
                                             const Ort::Custom::Tensor<OrtT>& values,
                                             const Ort::Custom::Tensor<uint8_t>& index,
                                             std::optional<const Ort::Custom::Tensor<OrtT>*> bias,
                                             Ort::Custom::Tensor<OrtT>& y) {
  return GuardCompute(kOp, [&]() -> Ort::Status {
    using T = DeviceType<OrtT>;
    if (!init_error_.empty()) return InvalidArgument(kOp, init_error_);
    const Ort::Custom::Tensor<OrtT>* bias_tensor = bias.has_value() ? *bias : nullptr;
    MatMulShape shape;
    ONNXSPARSE_RETURN_IF_ERROR(ResolveMatMulShape(kOp, attrs_.trans_a, a.Shape(), values.Shape(), index.Shape(),
                                                  bias_tensor != nullptr ? &bias_tensor->Shape() : nullptr, shape));
    const int64_t m = shape.m, k = shape.k, n = shape.n;
    const T* bias_ptr = bias_tensor != nullptr ? reinterpret_cast<const T*>(bias_tensor->Data()) : nullptr;
    T* out = reinterpret_cast<T*>(y.Allocate(shape.y_shape));
    if (m == 0 || n == 0) return Ort::Status{nullptr};
    cudaStream_t stream = ComputeStream(context);
    ScopedDevice device(runner_.Device(stream));  // the session's device, not the thread's
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, device.error());
    ONNXSPARSE_RETURN_IF_ERROR(runner_.ValidateOnce(kOp, stream, index.Data(), n, k));

    const T* x = reinterpret_cast<const T*>(a.Data());
    if (k == 0) {
      // An empty reduction: Y = bias (or 0).
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, cudaMemsetAsync(out, 0, sizeof(T) * m * n, stream));
      if (bias_ptr != nullptr) ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, LaunchAddBias<T>(out, m, n, n, bias_ptr, stream));
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, LaunchActivation<T>(out, m * n, act_, stream));
      return Ort::Status{nullptr};
    }
    if (attrs_.trans_a) {
      cudaError_t err = cudaSuccess;
      T* xt = static_cast<T*>(StreamScratch(stream, sizeof(T) * m * k, &err));
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, err);
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, LaunchTranspose<T>(x, xt, 1, k, m, nullptr, stream));  // [K, M] -> [M, K]
      x = xt;
    }
    SparseGemmArgs args;
    args.x = x;
    args.m = m;
    args.k = k;
    args.n = n;
    args.values = values.Data();
    args.index = index.Data();
    args.bias = bias_ptr;
    args.alpha = attrs_.alpha;
    args.y = out;
    args.ldy = n;
    ONNXSPARSE_RETURN_IF_ERROR(runner_.Run<T>(kOp, stream, 0, args));
    ONNXSPARSE_RETURN_IF_ERROR(runner_.PropagateNonFinite<T>(kOp, stream, x, m, k, static_cast<const T*>(args.values),
                                                             args.index, n, out, n));  // NaN/Inf like dense
    // The fused activation: an elementwise pass on the stream, after the NaN/Inf fix-up (as on the CPU).
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, LaunchActivation<T>(out, m * n, act_, stream));
    return Ort::Status{nullptr};
  });
}

template struct MatMulCompressCuda<float>;
template struct MatMulCompressCuda<Ort::Float16_t>;
template struct MatMulCompressCuda<Ort::BFloat16_t>;

}  // namespace onnxsparse::cuda
