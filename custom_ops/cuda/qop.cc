#include "cuda/qop.h"

#include "common/attributes.h"
#include "common/op_shapes.h"

namespace onnxsparse::cuda {

namespace {

// Input i, or null when absent (beyond the node's inputs, or spelled "").
const OrtValue* InputOrNull(OrtKernelContext* context, size_t i) {
  const OrtApi& api = Ort::GetApi();
  size_t count = 0;
  OrtStatus* status = api.KernelContext_GetInputCount(context, &count);
  if (status != nullptr) {
    api.ReleaseStatus(status);
    return nullptr;
  }
  if (i >= count) return nullptr;
  const OrtValue* value = nullptr;
  status = api.KernelContext_GetInput(context, i, &value);
  if (status != nullptr) {
    api.ReleaseStatus(status);
    return nullptr;
  }
  return value;
}

std::vector<int64_t> ShapeOf(const OrtValue* value) {
  return Ort::ConstValue(value).GetTensorTypeAndShapeInfo().GetShape();
}

const void* DataOf(const OrtValue* value) { return Ort::ConstValue(value).GetTensorRawData(); }

// A scalar input: one element (shape [] or [1]).
Ort::Status ScalarInput(const char* op, OrtKernelContext* context, size_t i, const char* name, bool required,
                        const void** data) {
  *data = nullptr;
  const OrtValue* value = InputOrNull(context, i);
  if (value == nullptr) {
    if (required) return InvalidArgument(op, StrCat("input ", i, " (", name, ") is missing"));
    return Ort::Status{nullptr};
  }
  const std::vector<int64_t> shape = ShapeOf(value);
  if (ElementCount(shape) != 1 || shape.size() > 1) {
    return InvalidArgument(op, StrCat(name, " must be a scalar (shape [] or [1]), got ", ShapeString(shape)));
  }
  *data = DataOf(value);
  return Ort::Status{nullptr};
}

}  // namespace

std::string ReadQActivation(const OrtKernelInfo* info, bool* relu) {
  std::string name;
  std::string error = ReadOptionalAttr(info, "activation", name);
  if (!error.empty()) return error;
  if (name.empty()) {
    *relu = false;
  } else if (name == "Relu") {
    *relu = true;
  } else {
    return "attribute 'activation' must be \"\" or \"Relu\", got \"" + name + "\"";
  }
  return {};
}

Ort::Status ReadQInputs(const char* op, OrtKernelContext* context, bool a_unsigned, QOutType out, QInputs* in) {
  for (size_t i : {size_t{0}, size_t{3}, size_t{4}, size_t{5}}) {
    if (InputOrNull(context, i) == nullptr) return InvalidArgument(op, StrCat("input ", i, " is missing"));
  }
  in->x = InputOrNull(context, 0);
  in->x_shape = ShapeOf(in->x);
  const OrtValue* values = InputOrNull(context, 3);
  const OrtValue* index = InputOrNull(context, 4);
  in->values_shape = ShapeOf(values);
  in->index_shape = ShapeOf(index);
  in->values = static_cast<const int8_t*>(DataOf(values));
  in->index = static_cast<const uint8_t*>(DataOf(index));
  QEpilogue& e = in->epi;
  e.a_unsigned = a_unsigned;
  e.out_type = out;
  const void* p = nullptr;
  ONNXSPARSE_RETURN_IF_ERROR(ScalarInput(op, context, 1, "a_scale", true, &p));
  e.a_scale = p;  // float16 in the fp16 form (the registration declares it so)
  ONNXSPARSE_RETURN_IF_ERROR(ScalarInput(op, context, 2, "a_zero_point", false, &e.a_zero_point));
  ONNXSPARSE_RETURN_IF_ERROR(ScalarInput(op, context, 7, "y_scale", false, &p));
  e.y_scale = static_cast<const float*>(p);
  ONNXSPARSE_RETURN_IF_ERROR(ScalarInput(op, context, 8, "y_zero_point", false, &e.y_zero_point));
  if (QOutIsFloat(out) && (e.y_scale != nullptr || e.y_zero_point != nullptr)) {
    return InvalidArgument(op, "y_scale or y_zero_point is given, but the output Y is float (a quantized Y is uint8 "
                               "or int8, the type of y_zero_point)");
  }
  if (!QOutIsFloat(out) && e.y_scale == nullptr) {
    return InvalidArgument(op, "the output Y is quantized (uint8 or int8) but y_scale (input 7) is missing");
  }
  const OrtValue* bias = InputOrNull(context, 6);
  in->has_bias = bias != nullptr;
  if (bias != nullptr) {
    in->bias_shape = ShapeOf(bias);
    e.bias = static_cast<const int32_t*>(DataOf(bias));
  }
  return Ort::Status{nullptr};
}

Ort::Status CheckQPerChannel(const char* op, OrtKernelContext* context, int64_t n, QInputs* in) {
  const OrtValue* w_scale = InputOrNull(context, 5);
  const std::vector<int64_t> shape = ShapeOf(w_scale);
  const int64_t count = ElementCount(shape);
  if (shape.size() > 1 || (count != 1 && count != n) || (count == n && n != 1 && shape.size() != 1)) {
    return InvalidArgument(op, StrCat("w_scale must have shape [", n, "] (per output channel) or [] / [1] (per "
                                      "tensor), got ", ShapeString(shape)));
  }
  in->epi.w_scale = static_cast<const float*>(DataOf(w_scale));
  in->epi.w_per_channel = count != 1;
  if (in->has_bias) ONNXSPARSE_RETURN_IF_ERROR(CheckBias(op, "bias", &in->bias_shape, n));
  return Ort::Status{nullptr};
}

}  // namespace onnxsparse::cuda
