#include "cuda/qmatmul_compress.h"

#include <vector>

#include "common/op_shapes.h"
#include "common/status.h"
#include "cuda/cuda_utils.h"
#include "cuda/qop.h"

namespace onnxsparse::cuda {

QMatMulCompressCuda::QMatMulCompressCuda(const OrtKernelInfo* info, bool a_unsigned, QOutType out) noexcept
    : a_unsigned_(a_unsigned), out_(out) {
  init_error_ = CaptureInitError([&] {
    std::string error = ReadQActivation(info, &relu_);
    runner_.Init(info, 3, 4);
    return error;
  });
}

Ort::Status QMatMulCompressCuda::Compute(OrtKernelContext* context) noexcept {
  return GuardCompute(kOpName, [&]() -> Ort::Status {
    if (!init_error_.empty()) return InvalidArgument(kOpName, init_error_);
    QInputs in;
    ONNXSPARSE_RETURN_IF_ERROR(ReadQInputs(kOpName, context, a_unsigned_, out_, &in));
    MatMulShape shape;
    ONNXSPARSE_RETURN_IF_ERROR(
        ResolveMatMulShape(kOpName, false, in.x_shape, in.values_shape, in.index_shape, nullptr, shape));
    const int64_t m = shape.m, k = shape.k, n = shape.n;
    if (k > kQMaxReduction) {
      return InvalidArgument(kOpName, StrCat("K=", k, " is larger than ", kQMaxReduction,
                                             ", where the int32 accumulation is no longer exact"));
    }
    ONNXSPARSE_RETURN_IF_ERROR(CheckQPerChannel(kOpName, context, n, &in));
    Ort::KernelContext ctx(context);
    Ort::UnownedValue y = ctx.GetOutput(0, shape.y_shape);
    if (m == 0 || n == 0) return Ort::Status{nullptr};
    cudaStream_t stream = ComputeStream(context);
    ScopedDevice device(runner_.Device(stream));  // the session's device, not the thread's
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOpName, device.error());
    QGemmArgs args;
    ONNXSPARSE_RETURN_IF_ERROR(runner_.Prepare(kOpName, stream, in.values, in.index, n, k, &args.epi.wsum));
    const int32_t* wsum = args.epi.wsum;
    args.epi = in.epi;
    args.epi.wsum = wsum;
    args.epi.relu = relu_;
    args.epi.y = y.GetTensorMutableRawData();
    args.epi.ldy = n;
    args.x = Ort::ConstValue(in.x).GetTensorRawData();
    args.m = m;
    args.k = k;
    args.n = n;
    args.values = in.values;
    args.index = in.index;
    void* scratch = nullptr;
    if (const size_t bytes = runner_.ScratchBytes(m, n, k); bytes > 0) {
      cudaError_t err = cudaSuccess;
      scratch = StreamScratch(stream, bytes, &err);
      ONNXSPARSE_RETURN_IF_CUDA_ERROR(kOpName, err);
    }
    return runner_.Run(kOpName, stream, 0, args, scratch);
  });
}

}  // namespace onnxsparse::cuda
