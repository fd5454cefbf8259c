#include "cuda/matmul_compress.h"

#include <vector>

#include "common/status.h"
#include "cuda/cuda_utils.h"
#include "cuda/sparse_gemm_impl.cuh"

namespace onnxsparse::cuda {

namespace {
constexpr const char* kOp = "MatMulCompress";
}

template <typename OrtT>
MatMulCompressCuda<OrtT>::MatMulCompressCuda(const OrtApi*, const OrtKernelInfo* info) {
  alpha_ = AttributeFloat(info, "alpha", 1.0f);
  trans_a_ = AttributeInt(info, "transA", 0);
  runner_.Init(info, 1, 2, 3);
}

template <typename OrtT>
Ort::Status MatMulCompressCuda<OrtT>::Compute(OrtKernelContext* context, const Ort::Custom::Tensor<OrtT>& a,
                                             const Ort::Custom::Tensor<OrtT>& values,
                                             const Ort::Custom::Tensor<uint8_t>& index,
                                             std::optional<const Ort::Custom::Tensor<OrtT>*> bias,
                                             Ort::Custom::Tensor<OrtT>& y) {
  return GuardCompute(kOp, [&]() -> Ort::Status {
    using T = DeviceType<OrtT>;
    const std::vector<int64_t>& a_shape = a.Shape();
    const std::vector<int64_t>& v_shape = values.Shape();
    const std::vector<int64_t>& i_shape = index.Shape();
    if (v_shape.size() != 2) return InvalidArgument(kOp, StrCat("values must be [N, K/2], got rank ", v_shape.size()));
    const int64_t n = v_shape[0];
    const int64_t k = v_shape[1] * 2;
    if (k % 4 != 0) return InvalidArgument(kOp, StrCat("K=", k, " is not a multiple of 4"));
    if (i_shape.size() != 2 || i_shape[0] != n || i_shape[1] != (k + 7) / 8) {
      return InvalidArgument(kOp, StrCat("index must be [", n, ", ", (k + 7) / 8, "] for values [", n, ", ", k / 2, "]"));
    }
    if (a_shape.empty() || a_shape.size() > 4) {
      return InvalidArgument(kOp, StrCat("A must have rank 1 to 4, got rank ", a_shape.size()));
    }
    int64_t m = 1;
    std::vector<int64_t> y_shape;
    if (trans_a_ != 0) {
      if (a_shape.size() != 2) return InvalidArgument(kOp, "transA=1 needs A of rank 2");
      if (a_shape[0] != k) return InvalidArgument(kOp, StrCat("A is [", a_shape[0], ", ", a_shape[1], "] (transA=1) but K=", k));
      m = a_shape[1];
      y_shape = {m, n};
    } else {
      if (a_shape.back() != k) {
        return InvalidArgument(kOp, StrCat("A's last dimension is ", a_shape.back(), " but the weight has K=", k));
      }
      for (size_t i = 0; i + 1 < a_shape.size(); ++i) {
        m *= a_shape[i];
        y_shape.push_back(a_shape[i]);
      }
      y_shape.push_back(n);
    }
    const T* bias_ptr = nullptr;
    if (bias.has_value() && *bias != nullptr) {
      const std::vector<int64_t>& b_shape = (*bias)->Shape();
      int64_t count = 1;
      for (int64_t d : b_shape) count *= d;
      if (count != n) return InvalidArgument(kOp, StrCat("bias must have N=", n, " elements, got ", count));
      bias_ptr = reinterpret_cast<const T*>((*bias)->Data());
    }
    T* out = reinterpret_cast<T*>(y.Allocate(y_shape));
    if (m == 0 || n == 0) return Ort::Status{nullptr};
    cudaStream_t stream = ComputeStream(context);
    ONNXSPARSE_RETURN_IF_ERROR(runner_.ValidateOnce(kOp, stream, index.Data(), n, k));

    const T* x = reinterpret_cast<const T*>(a.Data());
    if (k == 0) {
      // An empty reduction: Y = bias (or 0).
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, cudaMemsetAsync(out, 0, sizeof(T) * m * n, stream));
      if (bias_ptr != nullptr) ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOp, LaunchAddBias<T>(out, m, n, n, bias_ptr, stream));
      return Ort::Status{nullptr};
    }
    if (trans_a_ != 0) {
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
    args.alpha = alpha_;
    args.y = out;
    args.ldy = n;
    return runner_.Run<T>(kOp, stream, 0, args);
  });
}

template struct MatMulCompressCuda<float>;
template struct MatMulCompressCuda<Ort::Float16_t>;
template struct MatMulCompressCuda<Ort::BFloat16_t>;

}  // namespace onnxsparse::cuda
