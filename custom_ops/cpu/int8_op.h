// What QMatMulCompress and QConv2dCompress (CPU) share: their registration as plain OrtCustomOps
// (the lite wrapper cannot take optional inputs in the middle of the list: a_zero_point, bias),
// the reading and checking of inputs 1-8 (docs/ops.md "int8 ops") and the per-call epilogue
// terms, and the constant weight packed once at kernel creation.
//
// Output type. ONNX Runtime infers a custom op's output type from the first registration, in
// registration order, whose declared input types match the node's inputs, and only then matches
// kernels on inputs and outputs. So each op is registered once per (TA, TY): for TY float first,
// declaring y_zero_point (input 8) as float, which no quantized node has; then uint8 and int8, whose
// y_zero_point has that type. A node without y_zero_point takes the float form; one with a uint8
// (int8) y_zero_point the uint8 (int8) form. The fp16 form (Y float16) is told apart by its a_scale:
// float16 there (as DequantizeLinear's output type is its scale's), float in every other form.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/ort_api.h"
#include "common/status.h"
#include "cpu/cpu_isa.h"
#include "cpu/int8_gemm.h"
#include "cpu/int8_kernels.h"

namespace onnxsparse::cpu {

// Inputs: A, a_scale, a_zero_point, values, index, w_scale, bias, y_scale, y_zero_point.
constexpr size_t kInt8Inputs = 9;

struct Int8Types {
  ONNXTensorElementDataType a = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;  // TA: uint8 or int8
  ONNXTensorElementDataType y = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;  // float, float16, uint8 or int8

  bool half() const { return y == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16; }
  bool quantized() const { return y == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 || y == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8; }
};

// Input i of the call, null when absent (beyond the node's inputs or spelled "").
const OrtValue* Int8Input(OrtKernelContext* context, size_t i);

// Input i as the terms' reader sees it: a call's input, or a constant input at kernel creation.
using Int8InputFn = std::function<const OrtValue*(size_t)>;

// One call's weight and epilogue, from inputs 1-8.
struct Int8CallTerms;

// The epilogue terms from inputs 1, 2 and 5-8 (read through `input`) for `weight`.
Ort::Status ComputeInt8Terms(const char* op, const Int8InputFn& input, Int8Types types, bool relu,
                             const Int8PackedWeight& weight, Int8CallTerms& terms);

struct Int8CallTerms {
  const Int8PackedWeight* weight = nullptr;
  std::unique_ptr<Int8PackedWeight> per_call;  // the weight packed for this call (values/index fed at run time)
  std::vector<int32_t> corr;
  std::vector<float> scale;
  Int8Epilogue epilogue;
  bool flip = false;        // int8 A: shifted by +128 into A_u
  uint8_t pad_byte = 0;     // a_zero_point as it appears in A_u (Conv's padding)
};

// The state both kernels keep from creation.
class Int8KernelBase {
 protected:
  Int8KernelBase(const char* op, const OrtKernelInfo* info, Int8Types types, int64_t conv_groups) noexcept;

  // Reads and checks inputs 1-8 against rows (N or OC) and k; packs the weight if it was not packed
  // at creation. When inputs 1, 2 and 5-8 are constants (the usual case), the terms computed from
  // them at creation serve every call.
  Ort::Status PrepareCall(OrtKernelContext* context, int64_t rows, int64_t k, Int8CallTerms& terms) const;

  const char* op_;
  Int8Types types_;
  int64_t conv_groups_ = 1;
  CpuIsa isa_ = CpuIsa::kPortable;
  bool relu_ = false;
  std::unique_ptr<Int8PackedWeight> packed_;  // the constant weight, packed at creation; else null
  std::unique_ptr<Int8CallTerms> constant_terms_;  // the epilogue from constant inputs, with packed_; else null
  std::string init_error_;                    // returned by every Compute
};

// The OrtCustomOp of Kernel for one (TA, TY). Kernel: kOpName, Kernel(const OrtKernelInfo*, Int8Types)
// noexcept, Ort::Status Compute(OrtKernelContext*) noexcept.
template <typename Kernel>
struct Int8CustomOp : OrtCustomOp {
  explicit Int8CustomOp(Int8Types types) : types_(types) {
    OrtCustomOp::version = ORT_API_VERSION;
    OrtCustomOp::CreateKernel = [](const OrtCustomOp* op, const OrtApi*, const OrtKernelInfo* info) -> void* {
      try {
        return new Kernel(info, static_cast<const Int8CustomOp*>(op)->types_);
      } catch (...) {
        return nullptr;
      }
    };
    OrtCustomOp::GetName = [](const OrtCustomOp*) { return Kernel::kOpName; };
    OrtCustomOp::GetExecutionProviderType = [](const OrtCustomOp*) { return "CPUExecutionProvider"; };
    OrtCustomOp::GetInputType = [](const OrtCustomOp* op, size_t i) {
      const Int8Types& t = static_cast<const Int8CustomOp*>(op)->types_;
      switch (i) {
        case 0: case 2: return t.a;
        case 3: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
        case 4: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
        case 6: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
        case 8: return t.y;  // float (float16) for the float (fp16) form (see above)
        case 1: return t.half() ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
        default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;  // w_scale, y_scale
      }
    };
    OrtCustomOp::GetInputTypeCount = [](const OrtCustomOp*) { return kInt8Inputs; };
    OrtCustomOp::GetOutputType = [](const OrtCustomOp* op, size_t) {
      return static_cast<const Int8CustomOp*>(op)->types_.y;
    };
    OrtCustomOp::GetOutputTypeCount = [](const OrtCustomOp*) { return size_t{1}; };
    OrtCustomOp::KernelCompute = nullptr;
    OrtCustomOp::KernelComputeV2 = [](void* kernel, OrtKernelContext* context) -> OrtStatusPtr {
      return static_cast<Kernel*>(kernel)->Compute(context).release();
    };
    OrtCustomOp::KernelDestroy = [](void* kernel) { delete static_cast<Kernel*>(kernel); };
    OrtCustomOp::GetInputCharacteristic = [](const OrtCustomOp*, size_t i) {
      const bool optional = i == 2 || i >= 6;  // a_zero_point, bias, y_scale, y_zero_point
      return optional ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
    };
    OrtCustomOp::GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
    OrtCustomOp::GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
    OrtCustomOp::GetVariadicInputMinArity = [](const OrtCustomOp*) { return 0; };
    OrtCustomOp::GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 0; };
    OrtCustomOp::GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 0; };
    OrtCustomOp::GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 0; };
    OrtCustomOp::CreateKernelV2 = nullptr;
    OrtCustomOp::InferOutputShapeFn = nullptr;
    OrtCustomOp::GetStartVersion = nullptr;
    OrtCustomOp::GetEndVersion = nullptr;
    OrtCustomOp::GetMayInplace = nullptr;
    OrtCustomOp::ReleaseMayInplace = nullptr;
    OrtCustomOp::GetAliasMap = nullptr;
    OrtCustomOp::ReleaseAliasMap = nullptr;
  }

  Int8Types types_;
};

// Appends Kernel's eight registrations: TA in {uint8, int8} x TY in {float (first), float16, uint8, int8}.
template <typename Kernel>
void AppendInt8Ops(std::vector<std::unique_ptr<OrtCustomOp>>& ops) {
  for (auto a : {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8}) {
    for (auto y : {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
                   ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8}) {
      ops.emplace_back(new Int8CustomOp<Kernel>(Int8Types{a, y}));
    }
  }
}

}  // namespace onnxsparse::cpu
