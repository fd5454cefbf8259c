#include "cpu/matmul_compress.h"

#include <type_traits>
#include <vector>

#include "common/attributes.h"
#include "common/float_convert.h"
#include "common/sparse_format.h"
#include "common/status.h"
#include "cpu/compressed_weight.h"
#include "cpu/constant_weight.h"
#include "cpu/fast_kernels.h"
#include "cpu/fast_matmul.h"
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
  try {
    init_error_ = ReadOptionalAttr(info, "alpha", alpha_);
    int64_t trans_a = 0;
    if (init_error_.empty()) init_error_ = ReadOptionalAttr(info, "transA", trans_a);
    if (init_error_.empty() && trans_a != 0 && trans_a != 1) {
      init_error_ = StrCat("attribute 'transA' must be 0 or 1, got ", trans_a);
    }
    trans_a_ = trans_a == 1;
    isa_ = SelectCpuIsa();
    if (init_error_.empty()) packed_ = PackConstantWeight<T>(info);
  } catch (const std::exception& e) {
    init_error_ = e.what();
  } catch (...) {
    init_error_ = "unknown error while reading attributes";
  }
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
  const std::vector<int64_t>& a_shape = a.Shape();
  const int64_t rank = static_cast<int64_t>(a_shape.size());
  if (rank < 1 || rank > 4) {
    return InvalidArgument(kOpName, "A must have rank 1 to 4, got shape " + ShapeString(a_shape));
  }
  if (trans_a_ && rank != 2) {
    return InvalidArgument(kOpName, "with transA=1, A must have rank 2, got shape " + ShapeString(a_shape));
  }
  int64_t m = 1;
  int64_t k = 0;
  std::vector<int64_t> y_shape;
  if (trans_a_) {
    k = a_shape[0];
    m = a_shape[1];
    y_shape = {m};
  } else {
    k = a_shape.back();
    for (int64_t d = 0; d + 1 < rank; ++d) {
      m *= a_shape[d];
      y_shape.push_back(a_shape[d]);
    }
  }

  CompressedWeightShape weight;
  ONNXSPARSE_RETURN_IF_ERROR(CheckCompressedWeight(kOpName, values.Shape(), index.Shape(), weight));
  if (weight.k != k) {
    return InvalidArgument(kOpName, StrCat("K of A is ", k, " but values of shape ", ShapeString(values.Shape()), " encode K=",
                                           weight.k, " (K = 2 * values.shape[1])"));
  }
  const T* bias_data = nullptr;
  if (bias != nullptr) {
    if (bias->Shape() != std::vector<int64_t>{weight.rows}) {
      return InvalidArgument(kOpName, StrCat("bias must have shape [", weight.rows, "], got ", ShapeString(bias->Shape())));
    }
    bias_data = bias->Data();
  }
  y_shape.push_back(weight.rows);
  T* y_data = y.Allocate(y_shape);

  if (packed_ != nullptr && packed_->rows == weight.rows && packed_->k == k) {
    return ComputeFast(context, a.Data(), m, k, bias_data, y_data);
  }

  MatMulProblem<T> problem;
  problem.m = m;
  problem.n = weight.rows;
  problem.k = k;
  problem.a = a.Data();
  problem.trans_a = trans_a_;
  problem.target.values = values.Data();
  problem.target.index = index.Data();
  problem.target.bias = bias_data;
  problem.target.out = y_data;
  problem.target.out_stride_m = weight.rows;
  problem.target.out_stride_n = 1;
  return SparseGemm<T>(context, kOpName, problem, alpha_);
}

template <typename T>
Ort::Status MatMulCompressKernel<T>::ComputeFast(OrtKernelContext* context, const T* a, int64_t m, int64_t k,
                                                 const T* bias, T* y) {
  constexpr bool kFloat = std::is_same_v<T, float>;
  const FastKernelSet& kernels = FastKernels(isa_);
  const int64_t n = packed_->rows;
  if (m == 0) return Ort::Status{nullptr};
  // A as fp32 rows [m, K]: used in place when it already is, else converted (and transposed) once.
  std::vector<float> a_buffer;
  const float* a32 = nullptr;
  if constexpr (kFloat) {
    if (!trans_a_) a32 = a;
  }
  if (a32 == nullptr) {
    a_buffer.resize(static_cast<size_t>(m * k));
    if (trans_a_) {
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
  if (!FastMatMul(context, kernels, *packed_, a32, m, c32, bias != nullptr ? bias32.data() : nullptr, alpha_)) {
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
