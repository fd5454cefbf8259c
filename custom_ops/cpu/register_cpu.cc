// The CPU kernels, one OrtCustomOp per (op, dtype): ONNX Runtime picks the variant whose types
// match the node.
#include "cpu/ops_cpu.h"

#include "common/lite_op.h"
#include "cpu/compress_op.h"
#include "cpu/conv2d_compress.h"
#include "cpu/matmul_compress.h"
#include "cpu/qconv2d_compress.h"
#include "cpu/qmatmul_compress.h"

namespace onnxsparse::cpu {

namespace {

constexpr const char* kCpu = "CPUExecutionProvider";

template <typename T>
void AppendOpsOfType(std::vector<std::unique_ptr<OrtCustomOp>>& ops) {
  ops.emplace_back(GuardedLiteOp<MatMulCompressKernel<T>>::Create("MatMulCompress", kCpu));
  ops.emplace_back(GuardedLiteOp<Conv2dCompressKernel<T>>::Create("Conv2dCompress", kCpu));
  ops.emplace_back(GuardedLiteOp<CompressOpKernel<T>>::Create("CompressOp", kCpu));
}

}  // namespace

void AppendCpuOps(std::vector<std::unique_ptr<OrtCustomOp>>& ops) {
  AppendOpsOfType<float>(ops);
  AppendOpsOfType<Ort::Float16_t>(ops);
  AppendOpsOfType<Ort::BFloat16_t>(ops);
  ops.emplace_back(GuardedLiteOp<CompressOpKernel<int8_t>>::Create("CompressOp", kCpu));
  // The int8 ops: one registration per (A type, output type), see cpu/int8_op.h.
  AppendInt8Ops<QMatMulCompressKernel>(ops);
  AppendInt8Ops<QConv2dCompressKernel>(ops);
}

}  // namespace onnxsparse::cpu
