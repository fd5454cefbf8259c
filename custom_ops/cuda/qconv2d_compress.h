// QConv2dCompress on CUDA (docs/ops.md, "int8 ops"): ONNX QLinearConv / QDQ Conv on NCHW with SPEC's
// compressed int8 weight, as an im2col of X (padding with the activation's zero point, as
// QLinearConv does) and the int8 sparse GEMM per group, whose epilogue writes Y in NCHW directly.
// Attributes as Conv2dCompress, and `activation` ("" or "Relu").
#pragma once
#include <string>

#include "common/op_shapes.h"
#include "common/ort_api.h"
#include "cuda/qgemm_runner.h"

namespace onnxsparse::cuda {

class QConv2dCompressCuda {
 public:
  static constexpr const char* kOpName = "QConv2dCompress";
  QConv2dCompressCuda(const OrtKernelInfo* info, bool a_unsigned, QOutType out) noexcept;
  Ort::Status Compute(OrtKernelContext* context) noexcept;

 private:
  bool a_unsigned_;
  QOutType out_;
  bool relu_ = false;
  ConvAttributes attrs_;
  std::string init_error_;  // set by the constructor, returned by every Compute
  QGemmRunner runner_;
};

}  // namespace onnxsparse::cuda
