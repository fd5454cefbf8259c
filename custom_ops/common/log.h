// Diagnostics through ONNX Runtime's logger: the session's logger of a kernel (KernelInfo_GetLogger)
// at ONNX Runtime's severities, so that the session's log_severity_level selects them and they
// reach wherever the application sends ONNX Runtime's log. Nothing of this library writes to
// stderr itself.
#pragma once
#include <string>

#include "common/ort_api.h"

namespace onnxsparse {

// The logger of the session that creates the kernel described by `info` (null when unavailable).
const OrtLogger* KernelLogger(const OrtKernelInfo* info);

// Logs `message` at `severity` on `logger`; nothing when the logger is null or filters it out.
// Never throws.
void Log(const OrtLogger* logger, OrtLoggingLevel severity, const std::string& message, const char* file, int line,
         const char* function);

// Whether `logger` would emit a message at `severity` (build expensive messages only then).
bool LogEnabled(const OrtLogger* logger, OrtLoggingLevel severity);

}  // namespace onnxsparse

#define ONNXSPARSE_LOG(logger, severity, message) \
  ::onnxsparse::Log((logger), (severity), (message), __FILE__, __LINE__, __func__)
