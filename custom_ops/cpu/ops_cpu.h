// CPU kernels of MatMulCompress, Conv2dCompress and CompressOp (fp32, fp16, bf16; CompressOp also
// int8) and of the int8 ops QMatMulCompress and QConv2dCompress (cpu/int8_op.h), for
// CPUExecutionProvider.
#pragma once
#include <memory>
#include <vector>

#include "common/ort_api.h"

namespace onnxsparse::cpu {

// Appends one OrtCustomOp per (op, dtype) variant; RegisterCustomOps adds them to the domain.
void AppendCpuOps(std::vector<std::unique_ptr<OrtCustomOp>>& ops);

}  // namespace onnxsparse::cpu
