#include "common/log.h"

namespace onnxsparse {

const OrtLogger* KernelLogger(const OrtKernelInfo* info) {
  if (info == nullptr) return nullptr;
  const OrtLogger* logger = nullptr;
  OrtStatus* status = Ort::GetApi().KernelInfo_GetLogger(info, &logger);
  if (status != nullptr) {
    Ort::GetApi().ReleaseStatus(status);
    return nullptr;
  }
  return logger;
}

bool LogEnabled(const OrtLogger* logger, OrtLoggingLevel severity) {
  if (logger == nullptr) return false;
  OrtLoggingLevel level = ORT_LOGGING_LEVEL_WARNING;
  OrtStatus* status = Ort::GetApi().Logger_GetLoggingSeverityLevel(logger, &level);
  if (status != nullptr) {
    Ort::GetApi().ReleaseStatus(status);
    return false;
  }
  return severity >= level;
}

void Log(const OrtLogger* logger, OrtLoggingLevel severity, const std::string& message, const char* file, int line,
         const char* function) {
  if (logger == nullptr) return;
  OrtStatus* status = Ort::GetApi().Logger_LogMessage(logger, severity, message.c_str(), file, line, function);
  if (status != nullptr) Ort::GetApi().ReleaseStatus(status);
}

}  // namespace onnxsparse
