// Registers the CUDA variants (float, float16, bfloat16) of the three ops, and the int8 ops
// QMatMulCompress and QConv2dCompress, for CUDAExecutionProvider, under the same names as the CPU variants.
#include "cuda/ops_cuda.h"

#include "cuda/compress_op.h"
#include "cuda/conv2d_compress.h"
#include "cuda/matmul_compress.h"
#include "cuda/qconv2d_compress.h"
#include "cuda/qmatmul_compress.h"
#include "cuda/qop.h"

namespace onnxsparse::cuda {

namespace {
constexpr const char* kCudaEp = "CUDAExecutionProvider";

template <template <typename> class Kernel>
void AppendAllTypes(const char* name, std::vector<std::unique_ptr<OrtCustomOp>>& ops) {
  ops.emplace_back(Ort::Custom::CreateLiteCustomOp<Kernel<float>>(name, kCudaEp));
  ops.emplace_back(Ort::Custom::CreateLiteCustomOp<Kernel<Ort::Float16_t>>(name, kCudaEp));
  ops.emplace_back(Ort::Custom::CreateLiteCustomOp<Kernel<Ort::BFloat16_t>>(name, kCudaEp));
}
}  // namespace

void AppendCudaOps(std::vector<std::unique_ptr<OrtCustomOp>>& ops) {
  AppendAllTypes<MatMulCompressCuda>("MatMulCompress", ops);
  AppendAllTypes<Conv2dCompressCuda>("Conv2dCompress", ops);
  AppendAllTypes<CompressOpCuda>("CompressOp", ops);
  // The int8 ops: six (A, Y) type variants each (cuda/qop.h).
  AppendQVariants<QMatMulCompressCuda>(ops);
  AppendQVariants<QConv2dCompressCuda>(ops);
}

}  // namespace onnxsparse::cuda
