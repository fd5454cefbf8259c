// What QMatMulCompress and QConv2dCompress share on CUDA (docs/ops.md, "int8 ops"): the custom-op
// struct that registers one (A type, Y type) variant, and the reading of the quantization inputs.
//
// The ops have 9 inputs, several optional, and an absent input may sit between present ones
// (`bias` "" with `y_scale` given). The lite custom-op wrapper crashes on such an input, so these
// ops are plain OrtCustomOp structs whose kernels read their inputs from the context themselves.
// Every variant declares the same 9 inputs (ONNX Runtime builds one schema per op name from the
// first variant): 0 A (TA), 1 a_scale (float), 2 a_zero_point (TA, optional), 3 values (int8),
// 4 index (uint8), 5 w_scale (float), 6 bias (int32, optional), 7 y_scale (float, optional),
// 8 y_zero_point (TY, optional; float in a float-output variant, which no quantized node matches), and
// output Y (TY or float). The fp16 form (Y float16) declares a_scale float16 (and input 8 float16);
// that is how ONNX Runtime tells it from the float form. The CPU kernels (cpu/int8_op.h) declare the same.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "common/ort_api.h"
#include "common/status.h"
#include "cuda/qgemm_impl.cuh"

namespace onnxsparse::cuda {

constexpr size_t kQInputCount = 9;

// One registered variant of Kernel (QMatMulCompressCuda or QConv2dCompressCuda) for A of a_type and
// Y of y_type (ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT for the float form). Kernel has
// Kernel(const OrtKernelInfo*, bool a_unsigned, QOutType out) and Ort::Status Compute(OrtKernelContext*).
template <typename Kernel>
struct QCudaOp : Ort::CustomOpBase<QCudaOp<Kernel>, Kernel> {
  QCudaOp(ONNXTensorElementDataType a_type, ONNXTensorElementDataType y_type) : a_type_(a_type), y_type_(y_type) {
    // Errors come back as statuses (the kernels never throw into ONNX Runtime).
    OrtCustomOp::KernelCompute = nullptr;
    OrtCustomOp::KernelComputeV2 = [](void* kernel, OrtKernelContext* context) -> OrtStatusPtr {
      return static_cast<Kernel*>(kernel)->Compute(context).release();
    };
  }
  void* CreateKernel(const OrtApi&, const OrtKernelInfo* info) const {
    const QOutType out = y_type_ == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT     ? QOutType::kFloat
                         : y_type_ == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ? QOutType::kHalf
                         : y_type_ == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8   ? QOutType::kUint8
                                                                            : QOutType::kInt8;
    return new Kernel(info, a_type_ == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, out);
  }
  const char* GetName() const { return Kernel::kOpName; }
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
  size_t GetInputTypeCount() const { return kQInputCount; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    switch (index) {
      case 0: case 2: return a_type_;
      case 1:
        return y_type_ == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16
                                                                : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
      case 5: case 7: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
      case 3: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
      case 4: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
      case 6: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
      case 8: return y_type_;  // float in the float form: no quantized node's y_zero_point is float
      default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    }
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    const bool optional = index == 2 || index == 6 || index == 7 || index == 8;
    return optional ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return y_type_; }

 private:
  ONNXTensorElementDataType a_type_, y_type_;
};

// Appends the eight variants of Kernel, TA in {uint8, int8} x TY in {float (first), float16, uint8, int8}, in
// the CPU kernels' order: ONNX Runtime infers a custom op's output type from the first variant whose
// declared input types match the node's inputs.
template <typename Kernel>
void AppendQVariants(std::vector<std::unique_ptr<OrtCustomOp>>& ops) {
  for (auto a : {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8}) {
    for (auto y : {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
                   ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8}) {
      ops.emplace_back(std::make_unique<QCudaOp<Kernel>>(a, y));
    }
  }
}

// The attribute `activation` of the int8 ops: "" or "Relu" (an error message otherwise).
std::string ReadQActivation(const OrtKernelInfo* info, bool* relu);

// The inputs of one call, as the kernels see them (device pointers; absent ones null).
struct QInputs {
  const OrtValue* x = nullptr;
  std::vector<int64_t> x_shape, values_shape, index_shape;
  const int8_t* values = nullptr;
  const uint8_t* index = nullptr;
  QEpilogue epi;  // everything but wsum, y, ldy, hw, offsets
  bool has_bias = false;
  std::vector<int64_t> bias_shape;
};

// Reads and checks the inputs against each other (n: the weight's rows = output features, checked
// by the caller's shape resolution): scalars are single elements, w_scale has 1 or n elements,
// y_scale and y_zero_point are there exactly when the output is quantized (y_zero_point may be
// absent: 0).
Ort::Status ReadQInputs(const char* op, OrtKernelContext* context, bool a_unsigned, QOutType out, QInputs* in);
// The checks that need n (after the shape resolution): w_scale, bias.
Ort::Status CheckQPerChannel(const char* op, OrtKernelContext* context, int64_t n, QInputs* in);

// The largest K the int32 accumulation is exact for (docs/ops.md).
constexpr int64_t kQMaxReduction = 131072;

}  // namespace onnxsparse::cuda
