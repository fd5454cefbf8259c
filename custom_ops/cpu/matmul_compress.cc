#include "cpu/matmul_compress.h"

#include <type_traits>
#include <vector>

#include "common/float_convert.h"
#include "common/op_shapes.h"
#include "common/sparse_format.h"
#include "common/status.h"
#include "cpu/constant_weight.h"
#include "cpu/epilogue.h"
#include "cpu/fast_kernels.h"
#include "cpu/fast_matmul.h"
#include "cpu/nonfinite.h"
#include "cpu/release_pages.h"
#include "cpu/sparse_gemm.h"

namespace onnxsparse::cpu {

namespace {

// A as the GEMM's left operand, [M, K] row-major, or [K, M] with transA.
template <typename T>
struct MatMulProblem {
  int64_t batches = 1, m = 0, n = 0, k = 0;
  const T* a = nullptr;
  bool trans_a = false;
  GemmTarget<T> target;

  void Pack(int64_t /*batch*/, int64_t m0, int64_t mc, float* panel) const {
    if (trans_a) {
      for (int64_t kk = 0; kk < k; ++kk) {
        const T* src = a + kk * m + m0;
        float* dst = panel + kk * kTileM;
        for (int64_t i = 0; i < mc; ++i) dst[i] = ToFloat(src[i]);
        for (int64_t i = mc; i < kTileM; ++i) dst[i] = 0.0f;
      }
      return;
    }
    for (int64_t i = 0; i < mc; ++i) {
      const T* row = a + (m0 + i) * k;
      for (int64_t kk = 0; kk < k; ++kk) panel[kk * kTileM + i] = ToFloat(row[kk]);
    }
    for (int64_t i = mc; i < kTileM; ++i) {
      for (int64_t kk = 0; kk < k; ++kk) panel[kk * kTileM + i] = 0.0f;
    }
  }

  GemmTarget<T> Target(int64_t /*batch*/) const { return target; }
};

}  // namespace

template <typename T>
MatMulCompressKernel<T>::MatMulCompressKernel(const OrtApi* /*api*/, const OrtKernelInfo* info) noexcept {
  init_error_ = CaptureInitError([&] {
    std::string error = ReadMatMulAttributes(info, attrs_);
    if (error.empty()) error = ReadActivationAttributes(info, act_);
    isa_ = SelectCpuIsa();
    if (error.empty()) packed_ = PackConstantWeight<T>(info);
    // The fast path reads only packed_ from now on: drop ONNX Runtime's file-mapped copy of the
    // compressed pair from memory (cpu/release_pages.h; pages come back from the file if read).
    if (packed_ != nullptr) ReleaseConstantInputs(info, 1, 2);
    return error;
  });
}

template <typename T>
Ort::Status MatMulCompressKernel<T>::Compute(OrtKernelContext* context, const Ort::Custom::Tensor<T>& a,
                                             const Ort::Custom::Tensor<T>& values,
                                             const Ort::Custom::Tensor<uint8_t>& index,
                                             std::optional<const Ort::Custom::Tensor<T>*> bias,
                                             Ort::Custom::Tensor<T>& y) {
  return GuardCompute(kOpName, [&]() -> Ort::Status {
    if (!init_error_.empty()) return InvalidArgument(kOpName, init_error_);
    return ComputeImpl(context, a, values, index, bias.has_value() ? *bias : nullptr, y);
  });
}

template <typename T>
Ort::Status MatMulCompressKernel<T>::ComputeImpl(OrtKernelContext* context, const Ort::Custom::Tensor<T>& a,
                                                 const Ort::Custom::Tensor<T>& values,
                                                 const Ort::Custom::Tensor<uint8_t>& index,
                                                 const Ort::Custom::Tensor<T>* bias, Ort::Custom::Tensor<T>& y) {
  MatMulShape shape;
  ONNXSPARSE_RETURN_IF_ERROR(ResolveMatMulShape(kOpName, attrs_.trans_a, a.Shape(), values.Shape(), index.Shape(),
                                                bias != nullptr ? &bias->Shape() : nullptr, shape));
  const int64_t m = shape.m, k = shape.k, n = shape.n;
  const T* bias_data = bias != nullptr ? bias->Data() : nullptr;
  T* y_data = y.Allocate(shape.y_shape);
  if (m == 0 || n == 0) return Ort::Status{nullptr};  // an empty output

  // NaN/Inf in A reach the outputs the dense product would give them (cpu/nonfinite.h); then the
  // activation runs after that fix-up, as a pass of its own, instead of in the product's epilogue.
  const bool non_finite = AnyNonFinite(a.Data(), m * k);
  ONNXSPARSE_RETURN_IF_ERROR(
      ComputeProduct(context, a, values, index, bias_data, shape, y_data, non_finite ? nullptr : &act_));
  if (non_finite) {
    PropagateNonFiniteMatMul(a.Data(), m, k, attrs_.trans_a ? 1 : k, attrs_.trans_a ? m : 1, index.Data(), n, y_data);
    ActivateOutput(act_, y_data, m * n);
  }
  return Ort::Status{nullptr};
}

template <typename T>
Ort::Status MatMulCompressKernel<T>::ComputeProduct(OrtKernelContext* context, const Ort::Custom::Tensor<T>& a,
                                                    const Ort::Custom::Tensor<T>& values,
                                                    const Ort::Custom::Tensor<uint8_t>& index, const T* bias_data,
                                                    const MatMulShape& shape, T* y_data, const Activation* act) {
  const int64_t m = shape.m, k = shape.k, n = shape.n;
  if (packed_ != nullptr && packed_->rows == n && packed_->k == k) {
    return ComputeFast(context, a.Data(), m, k, bias_data, y_data, act);
  }

  MatMulProblem<T> problem;
  problem.m = m;
  problem.n = n;
  problem.k = k;
  problem.a = a.Data();
  problem.trans_a = attrs_.trans_a;
  problem.target.values = values.Data();
  problem.target.index = index.Data();
  problem.target.bias = bias_data;
  problem.target.out = y_data;
  problem.target.out_stride_m = n;
  problem.target.out_stride_n = 1;
  if (act != nullptr) problem.target.act = *act;
  return SparseGemm<T>(context, kOpName, problem, attrs_.alpha);
}

template <typename T>
Ort::Status MatMulCompressKernel<T>::ComputeFast(OrtKernelContext* context, const T* a, int64_t m, int64_t k,
                                                 const T* bias, T* y, const Activation* act) {
  constexpr bool kFloat = std::is_same_v<T, float>;
  const FastKernelSet& kernels = FastKernels(isa_);
  const int64_t n = packed_->rows;
  if (m == 0) return Ort::Status{nullptr};
  // A as fp32 rows [m, K]: used in place when it already is, else converted (and transposed) once.
  std::vector<float> a_buffer;
  const float* a32 = nullptr;
  if constexpr (kFloat) {
    if (!attrs_.trans_a) a32 = a;
  }
  if (a32 == nullptr) {
    a_buffer.resize(static_cast<size_t>(m * k));
    if (attrs_.trans_a) {
      for (int64_t kk = 0; kk < k; ++kk)
        for (int64_t i = 0; i < m; ++i) a_buffer[i * k + kk] = ToFloat(a[kk * m + i]);
    } else if constexpr (std::is_same_v<T, Ort::Float16_t>) {
      kernels.half_to_float(reinterpret_cast<const uint16_t*>(a), a_buffer.data(), m * k);
    } else {
      for (int64_t i = 0; i < m * k; ++i) a_buffer[i] = ToFloat(a[i]);
    }
    a32 = a_buffer.data();
  }
  std::vector<float> bias32;
  if (bias != nullptr) {
    bias32.resize(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) bias32[j] = ToFloat(bias[j]);
  }
  std::vector<float> c_buffer;
  float* c32 = nullptr;
  if constexpr (kFloat) {
    c32 = y;
  } else {
    c_buffer.resize(static_cast<size_t>(m * n));
    c32 = c_buffer.data();
  }
  if (!FastMatMul(context, kernels, *packed_, a32, m, c32, bias != nullptr ? bias32.data() : nullptr, attrs_.alpha,
                  act)) {
    return RuntimeError(kOpName, "the product failed (out of memory?)");
  }
  if constexpr (std::is_same_v<T, Ort::Float16_t>) {
    kernels.float_to_half(c32, reinterpret_cast<uint16_t*>(y), m * n);
  } else if constexpr (!kFloat) {
    for (int64_t i = 0; i < m * n; ++i) y[i] = FromFloat<T>(c32[i]);
  }
  return Ort::Status{nullptr};
}

template struct MatMulCompressKernel<float>;
template struct MatMulCompressKernel<Ort::Float16_t>;
template struct MatMulCompressKernel<Ort::BFloat16_t>;

}  // namespace onnxsparse::cpu
