// CUDA kernels of MatMulCompress, Conv2dCompress and CompressOp, for CUDAExecutionProvider.
#pragma once
#include <memory>
#include <vector>

#include "common/ort_api.h"

namespace onnxsparse::cuda {

void AppendCudaOps(std::vector<std::unique_ptr<OrtCustomOp>>& ops);

}  // namespace onnxsparse::cuda
