#include "cpu/qmatmul_compress.h"

#include <vector>

#include "common/op_shapes.h"
#include "common/status.h"

namespace onnxsparse::cpu {

QMatMulCompressKernel::QMatMulCompressKernel(const OrtKernelInfo* info, Int8Types types) noexcept
    : Int8KernelBase(kOpName, info, types, 1) {}

Ort::Status QMatMulCompressKernel::Compute(OrtKernelContext* context) noexcept {
  return GuardCompute(kOpName, [&]() -> Ort::Status {
    if (!init_error_.empty()) return InvalidArgument(kOpName, init_error_);
    return ComputeImpl(context);
  });
}

Ort::Status QMatMulCompressKernel::ComputeImpl(OrtKernelContext* context) {
  for (size_t i : {size_t{0}, size_t{3}, size_t{4}}) {
    if (Int8Input(context, i) == nullptr) return InvalidArgument(kOpName, StrCat("input ", i, " is missing"));
  }
  Ort::ConstValue a_value(Int8Input(context, 0));
  Ort::ConstValue values(Int8Input(context, 3)), index(Int8Input(context, 4));
  const std::vector<int64_t> a_shape = a_value.GetTensorTypeAndShapeInfo().GetShape();
  const std::vector<int64_t> values_shape = values.GetTensorTypeAndShapeInfo().GetShape();
  const std::vector<int64_t> index_shape = index.GetTensorTypeAndShapeInfo().GetShape();
  MatMulShape shape;
  // bias is checked with the other inputs 1-8 (PrepareCall).
  ONNXSPARSE_RETURN_IF_ERROR(ResolveMatMulShape(kOpName, false, a_shape, values_shape, index_shape, nullptr, shape));
  Int8CallTerms terms;
  ONNXSPARSE_RETURN_IF_ERROR(PrepareCall(context, shape.n, shape.k, terms));

  Ort::KernelContext ctx(context);
  auto y_value = ctx.GetOutput(0, shape.y_shape);
  void* y = y_value.GetTensorMutableRawData();
  if (shape.m == 0 || shape.n == 0) return Ort::Status{nullptr};

  const Int8PackedWeight& w = *terms.weight;
  const int64_t lda = Int8RowBytes(w);
  std::vector<uint8_t> a_rows(static_cast<size_t>(shape.m * lda));
  PrepareInt8Rows(static_cast<const uint8_t*>(a_value.GetTensorRawData()), shape.m, shape.k, terms.flip,
                  a_rows.data(), lda);
  if (!RunInt8Gemm(context, Int8Kernels(isa_), w, 0, a_rows.data(), lda, shape.m, terms.epilogue, y, shape.n, 1)) {
    return RuntimeError(kOpName, "the product failed (out of memory?)");
  }
  return Ort::Status{nullptr};
}

}  // namespace onnxsparse::cpu
