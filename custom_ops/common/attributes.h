// Non-throwing attribute readers for kernel constructors. ONNX Runtime's C++ getters throw when an
// attribute is absent; a constructor must not throw into ONNX Runtime, so these report instead:
// kAbsent (use the default), kFound, or kWrongType (the attribute exists but is not of that type).
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/activation.h"
#include "common/ort_api.h"

namespace onnxsparse {

enum class AttrResult { kAbsent, kFound, kWrongType };

namespace detail {
// ONNX Runtime answers a missing attribute with "No attribute with name:'...'is defined." and a
// mistyped one with another message; both come as ORT_FAIL, so the message tells them apart.
inline AttrResult AttrStatus(OrtStatus* status) {
  if (status == nullptr) return AttrResult::kFound;
  const OrtApi& api = Ort::GetApi();
  const char* message = api.GetErrorMessage(status);
  const bool absent = message != nullptr && std::strstr(message, "No attribute") != nullptr;
  api.ReleaseStatus(status);
  return absent ? AttrResult::kAbsent : AttrResult::kWrongType;
}
}  // namespace detail

inline AttrResult ReadAttr(const OrtKernelInfo* info, const char* name, float& out) {
  return detail::AttrStatus(Ort::GetApi().KernelInfoGetAttribute_float(info, name, &out));
}

inline AttrResult ReadAttr(const OrtKernelInfo* info, const char* name, int64_t& out) {
  return detail::AttrStatus(Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &out));
}

inline AttrResult ReadAttr(const OrtKernelInfo* info, const char* name, std::string& out) {
  const OrtApi& api = Ort::GetApi();
  size_t size = 0;
  AttrResult result = detail::AttrStatus(api.KernelInfoGetAttribute_string(info, name, nullptr, &size));
  if (result != AttrResult::kFound) return result;
  std::string buffer(size, '\0');
  result = detail::AttrStatus(api.KernelInfoGetAttribute_string(info, name, buffer.data(), &size));
  if (result != AttrResult::kFound) return result;
  buffer.resize(size > 0 ? size - 1 : 0);  // size counts the terminating NUL
  out = std::move(buffer);
  return AttrResult::kFound;
}

inline AttrResult ReadAttr(const OrtKernelInfo* info, const char* name, std::vector<int64_t>& out) {
  const OrtApi& api = Ort::GetApi();
  size_t size = 0;
  AttrResult result = detail::AttrStatus(api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &size));
  if (result != AttrResult::kFound) return result;
  std::vector<int64_t> buffer(size);
  if (size > 0) {
    result = detail::AttrStatus(api.KernelInfoGetAttributeArray_int64(info, name, buffer.data(), &size));
    if (result != AttrResult::kFound) return result;
  }
  out = std::move(buffer);
  return AttrResult::kFound;
}

inline AttrResult ReadAttr(const OrtKernelInfo* info, const char* name, std::vector<float>& out) {
  const OrtApi& api = Ort::GetApi();
  size_t size = 0;
  AttrResult result = detail::AttrStatus(api.KernelInfoGetAttributeArray_float(info, name, nullptr, &size));
  if (result != AttrResult::kFound) return result;
  std::vector<float> buffer(size);
  if (size > 0) {
    result = detail::AttrStatus(api.KernelInfoGetAttributeArray_float(info, name, buffer.data(), &size));
    if (result != AttrResult::kFound) return result;
  }
  out = std::move(buffer);
  return AttrResult::kFound;
}

// Reads an optional attribute into out (left at its default when absent); returns an error
// message, empty when fine.
template <typename V>
std::string ReadOptionalAttr(const OrtKernelInfo* info, const char* name, V& out) {
  if (ReadAttr(info, name, out) == AttrResult::kWrongType) {
    return std::string("attribute '") + name + "' has the wrong type";
  }
  return {};
}

// The fused activation: attributes `activation` (string, default "": none) and `activation_params`
// (floats); returns an error message, empty when fine.
inline std::string ReadActivationAttributes(const OrtKernelInfo* info, Activation& out) {
  std::string name;
  std::vector<float> params;
  std::string error = ReadOptionalAttr(info, "activation", name);
  if (error.empty()) error = ReadOptionalAttr(info, "activation_params", params);
  if (error.empty()) error = ParseActivation(name, params, out);
  return error;
}

}  // namespace onnxsparse
