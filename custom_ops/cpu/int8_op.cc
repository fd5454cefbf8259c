#include "cpu/int8_op.h"

#include "common/attributes.h"
#include "common/op_shapes.h"
#include "cpu/constant_weight.h"

namespace onnxsparse::cpu {

namespace {

struct TensorView {
  const OrtValue* value = nullptr;
  std::vector<int64_t> shape;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  int64_t count = 0;
  const void* data = nullptr;
};

TensorView View(const OrtValue* value) {
  TensorView view;
  view.value = value;
  if (value == nullptr) return view;
  Ort::ConstValue v(value);
  auto info = v.GetTensorTypeAndShapeInfo();
  view.shape = info.GetShape();
  view.type = info.GetElementType();
  view.count = static_cast<int64_t>(info.GetElementCount());
  view.data = v.GetTensorRawData();
  return view;
}

const char* TypeName(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    default: return "another type";
  }
}

// A scalar input: shape [] or [1] (a single element of any shape is refused: docs/ops.md says scalar).
Ort::Status CheckScalar(const char* op, const char* name, const TensorView& view) {
  const bool scalar = view.shape.empty() || (view.shape.size() == 1 && view.shape[0] == 1);
  if (!scalar) return InvalidArgument(op, StrCat(name, " must be a scalar (shape [] or [1]), got ", ShapeString(view.shape)));
  return Ort::Status{nullptr};
}

int32_t ZeroPointValue(ONNXTensorElementDataType type, const void* data) {
  return type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 ? int32_t{*static_cast<const int8_t*>(data)}
                                                    : int32_t{*static_cast<const uint8_t*>(data)};
}

// The node spells input i "" (an absent optional input).
bool InputIsAbsent(const OrtKernelInfo* info, size_t i) {
  size_t size = 0;
  if (OrtStatus* status = Ort::GetApi().KernelInfo_GetInputName(info, i, nullptr, &size)) {
    Ort::GetApi().ReleaseStatus(status);
    return false;
  }
  return size <= 1;
}

}  // namespace

const OrtValue* Int8Input(OrtKernelContext* context, size_t i) {
  const OrtApi& api = Ort::GetApi();
  size_t count = 0;
  if (OrtStatus* status = api.KernelContext_GetInputCount(context, &count)) {
    api.ReleaseStatus(status);
    return nullptr;
  }
  if (i >= count) return nullptr;
  const OrtValue* value = nullptr;
  if (OrtStatus* status = api.KernelContext_GetInput(context, i, &value)) {
    api.ReleaseStatus(status);
    return nullptr;
  }
  return value;
}

Int8KernelBase::Int8KernelBase(const char* op, const OrtKernelInfo* info, Int8Types types,
                               int64_t conv_groups) noexcept
    : op_(op), types_(types), conv_groups_(conv_groups) {
  init_error_ = CaptureInitError([&]() -> std::string {
    isa_ = SelectCpuIsa();
    std::string activation;
    std::string error = ReadOptionalAttr(info, "activation", activation);
    if (!error.empty()) return error;
    if (activation == "Relu") {
      relu_ = true;
    } else if (!activation.empty()) {
      return "attribute 'activation' must be \"\" or \"Relu\" for the int8 ops, got \"" + activation + "\"";
    }
    // The constant weight, packed once. A malformed one is left to Compute, which reports it.
    const OrtValue* values = detail::ConstantInput(info, 3);
    const OrtValue* index = detail::ConstantInput(info, 4);
    if (values == nullptr || index == nullptr || conv_groups_ <= 0) return {};
    const TensorView v = View(values), x = View(index);
    if (v.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 || x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8) return {};
    CompressedWeightShape shape;
    if (!CheckCompressedWeight(op_, v.shape, x.shape, shape).IsOK()) return {};
    if (shape.k > kMaxInt8Reduction || shape.rows % conv_groups_ != 0) return {};
    std::string pack_error;
    packed_ = PackInt8Weight(static_cast<const int8_t*>(v.data), static_cast<const uint8_t*>(x.data), shape.rows,
                             shape.k, conv_groups_, Int8Kernels(isa_).format, pack_error);
    if (packed_ == nullptr) return {};
    // Inputs 1, 2, 5-8 all constant or absent: their terms once, here (an error is left to Compute).
    size_t count = 0;
    if (OrtStatus* status = Ort::GetApi().KernelInfo_GetInputCount(info, &count)) {
      Ort::GetApi().ReleaseStatus(status);
      return {};
    }
    std::vector<const OrtValue*> constants(kInt8Inputs, nullptr);
    for (size_t i : {1, 2, 5, 6, 7, 8}) {
      if (i >= count || InputIsAbsent(info, i)) continue;
      constants[i] = detail::ConstantInput(info, i);
      if (constants[i] == nullptr) return {};  // fed at run time
    }
    auto terms = std::make_unique<Int8CallTerms>();
    if (ComputeInt8Terms(op_, [&constants](size_t i) { return constants[i]; }, types_, relu_, *packed_, *terms)
            .IsOK()) {
      constant_terms_ = std::move(terms);
    }
    return {};
  });
}

Ort::Status Int8KernelBase::PrepareCall(OrtKernelContext* context, int64_t rows, int64_t k,
                                        Int8CallTerms& terms) const {
  const char* op = op_;
  if (k > kMaxInt8Reduction) {
    return InvalidArgument(op, StrCat("K=", k, " is too large: the int32 sum is exact only up to K=",
                                      kMaxInt8Reduction));
  }
  // Weight (inputs 3, 4; shapes checked by the caller's shape resolution).
  if (packed_ != nullptr && packed_->rows == rows && packed_->k == k) {
    if (constant_terms_ != nullptr) {  // everything from creation: no per-call work
      terms.weight = packed_.get();
      terms.epilogue = constant_terms_->epilogue;
      terms.flip = constant_terms_->flip;
      terms.pad_byte = constant_terms_->pad_byte;
      return Ort::Status{nullptr};
    }
    terms.weight = packed_.get();
  } else {
    const TensorView v = View(Int8Input(context, 3)), x = View(Int8Input(context, 4));
    std::string error;
    terms.per_call = PackInt8Weight(static_cast<const int8_t*>(v.data), static_cast<const uint8_t*>(x.data), rows, k,
                                    conv_groups_, Int8Kernels(isa_).format, error);
    if (terms.per_call == nullptr) return InvalidArgument(op, error);
    terms.weight = terms.per_call.get();
  }
  return ComputeInt8Terms(op, [context](size_t i) { return Int8Input(context, i); }, types_, relu_, *terms.weight,
                          terms);
}

Ort::Status ComputeInt8Terms(const char* op, const Int8InputFn& input, Int8Types types, bool relu,
                             const Int8PackedWeight& w, Int8CallTerms& terms) {
  const int64_t rows = w.rows;
  const TensorView a_scale = View(input(1));
  if (a_scale.value == nullptr) return InvalidArgument(op, "input 1 (a_scale) is missing");
  ONNXSPARSE_RETURN_IF_ERROR(CheckScalar(op, "a_scale", a_scale));
  // float16 in the fp16 form (Y float16), float otherwise (the registrations declare it so).
  const float a_scale_value = a_scale.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16
                                  ? Ort::Float16_t::FromBits(*static_cast<const uint16_t*>(a_scale.data)).ToFloat()
                                  : *static_cast<const float*>(a_scale.data);

  int32_t a_zero_point = 0;
  const TensorView a_zp = View(input(2));
  if (a_zp.value != nullptr) {
    ONNXSPARSE_RETURN_IF_ERROR(CheckScalar(op, "a_zero_point", a_zp));
    a_zero_point = ZeroPointValue(a_zp.type, a_zp.data);
  }
  terms.flip = types.a == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
  const int32_t zp_u = terms.flip ? a_zero_point + 128 : a_zero_point;  // the zero point in A_u
  terms.pad_byte = static_cast<uint8_t>(zp_u);

  const TensorView w_scale = View(input(5));
  if (w_scale.value == nullptr) return InvalidArgument(op, "input 5 (w_scale) is missing");
  const bool per_tensor = w_scale.shape.empty() || (w_scale.shape.size() == 1 && w_scale.shape[0] == 1);
  if (!per_tensor && w_scale.shape != std::vector<int64_t>{rows}) {
    return InvalidArgument(op, StrCat("w_scale must have shape [", rows, "] (per output channel) or [] / [1], got ",
                                      ShapeString(w_scale.shape)));
  }
  const float* w_scale_data = static_cast<const float*>(w_scale.data);

  const TensorView bias = View(input(6));
  if (bias.value != nullptr && bias.shape != std::vector<int64_t>{rows}) {
    return InvalidArgument(op, StrCat("bias must have shape [", rows, "], got ", ShapeString(bias.shape)));
  }
  const int32_t* bias_data = static_cast<const int32_t*>(bias.data);

  const TensorView y_scale = View(input(7));
  const TensorView y_zp = View(input(8));
  if ((y_scale.value == nullptr) != (y_zp.value == nullptr)) {
    return InvalidArgument(op, "y_scale and y_zero_point must be both present (quantized output) or both absent "
                               "(float output)");
  }
  const bool quantized = y_scale.value != nullptr;
  if (quantized) {
    if (!types.quantized()) {
      return InvalidArgument(op, StrCat("y_zero_point must be uint8 or int8, got ", TypeName(y_zp.type)));
    }
    ONNXSPARSE_RETURN_IF_ERROR(CheckScalar(op, "y_scale", y_scale));
    ONNXSPARSE_RETURN_IF_ERROR(CheckScalar(op, "y_zero_point", y_zp));
  }

  terms.corr.resize(static_cast<size_t>(rows));
  terms.scale.resize(static_cast<size_t>(rows));
  const float y_scale_value = quantized ? *static_cast<const float*>(y_scale.data) : 1.0f;
  for (int64_t n = 0; n < rows; ++n) {
    const uint32_t b = bias_data != nullptr ? static_cast<uint32_t>(bias_data[n]) : 0u;
    terms.corr[n] = static_cast<int32_t>(b - static_cast<uint32_t>(zp_u) * static_cast<uint32_t>(w.row_sums[n]));
    const float scale = a_scale_value * w_scale_data[per_tensor ? 0 : n];  // one fp32 product
    terms.scale[n] = quantized ? scale / y_scale_value : scale;
  }
  terms.epilogue.corr = terms.corr.data();
  terms.epilogue.scale = terms.scale.data();
  terms.epilogue.relu = relu;
  if (quantized) {
    terms.epilogue.out = types.y == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 ? Int8Out::kInt8 : Int8Out::kUint8;
    terms.epilogue.y_zero_point = ZeroPointValue(y_zp.type, y_zp.data);
  } else {
    terms.epilogue.out = types.half() ? Int8Out::kHalf : Int8Out::kFloat;
  }
  return Ort::Status{nullptr};
}

}  // namespace onnxsparse::cpu
