// One error style for every kernel: an Ort::Status whose message starts with the op's name.
// Kernels never throw into ONNX Runtime and never abort: bad input becomes an error status.
#pragma once
#include <exception>
#include <sstream>
#include <string>
#include <utility>

#include "common/ort_api.h"

namespace onnxsparse {

template <typename... Args>
std::string StrCat(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}

inline Ort::Status InvalidArgument(const std::string& op, const std::string& message) {
  return Ort::Status((op + ": " + message).c_str(), ORT_INVALID_ARGUMENT);
}

inline Ort::Status RuntimeError(const std::string& op, const std::string& message) {
  return Ort::Status((op + ": " + message).c_str(), ORT_RUNTIME_EXCEPTION);
}

// Runs body() and turns any exception escaping it into an error status carrying the op's name.
template <typename Body>
Ort::Status GuardCompute(const char* op, Body&& body) noexcept {
  try {
    return body();
  } catch (const Ort::Exception& e) {
    return Ort::Status((std::string(op) + ": " + e.what()).c_str(), e.GetOrtErrorCode());
  } catch (const std::exception& e) {
    return RuntimeError(op, e.what());
  } catch (...) {
    return RuntimeError(op, "unknown error");
  }
}

// Runs a kernel constructor's body and returns its error ("" when none). An exception escaping the
// body becomes that error too: a constructor must not throw into ONNX Runtime, so the kernel keeps
// the error and every Compute returns it.
template <typename Body>
std::string CaptureInitError(Body&& body) noexcept {
  try {
    return body();
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown error while creating the kernel";
  }
}

}  // namespace onnxsparse

#define ONNXSPARSE_RETURN_IF_ERROR(expr)       \
  do {                                         \
    Ort::Status _status = (expr);              \
    if (!_status.IsOK()) return _status;       \
  } while (0)
