// QConv2dCompress (CPU): ONNX QLinearConv / QDQ Conv on NCHW with SPEC's compressed int8 weight
// (docs/ops.md "int8 ops"). Per (image, group): X is turned into A_u rows, one per output pixel,
// in the weight's (kh, kw, c) order (im2col through an HWC copy; padding reads a_zero_point), then
// the int8 product of QMatMulCompress, whose epilogue stores into NCHW.
#pragma once
#include "common/op_shapes.h"
#include "common/ort_api.h"
#include "cpu/int8_op.h"

namespace onnxsparse::cpu {

struct QConv2dCompressKernel : Int8KernelBase {
  static constexpr const char* kOpName = "QConv2dCompress";

  QConv2dCompressKernel(const OrtKernelInfo* info, Int8Types types) noexcept;
  Ort::Status Compute(OrtKernelContext* context) noexcept;

 private:
  Ort::Status ComputeImpl(OrtKernelContext* context);

  ConvAttributes attrs_;
  std::string attr_error_;
};

}  // namespace onnxsparse::cpu
