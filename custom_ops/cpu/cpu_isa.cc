#include "cpu/cpu_isa.h"

#include "common/log.h"
#include "common/status.h"

namespace onnxsparse::cpu {

namespace {

CpuIsa Best() {
  CpuIsa best = CpuIsa::kAvx512;
  while (!CpuSupports(best)) best = static_cast<CpuIsa>(static_cast<int>(best) - 1);
  return best;
}

// The ISA an option names (kAuto: the best there is).
CpuIsa Wanted(CpuIsaOption option) {
  switch (option) {
    case CpuIsaOption::kPortable: return CpuIsa::kPortable;
    case CpuIsaOption::kAvx2: return CpuIsa::kAvx2;
    case CpuIsaOption::kAvx512: return CpuIsa::kAvx512;
    case CpuIsaOption::kAuto: break;
  }
  return Best();
}

std::string NodeName(const OrtKernelInfo* info) {
  if (info == nullptr) return "?";
  size_t size = 0;
  OrtStatus* status = Ort::GetApi().KernelInfo_GetNodeName(info, nullptr, &size);
  std::string name(size, '\0');
  if (status == nullptr) status = Ort::GetApi().KernelInfo_GetNodeName(info, name.data(), &size);
  if (status != nullptr) {
    Ort::GetApi().ReleaseStatus(status);
    return "?";
  }
  name.resize(size > 0 ? size - 1 : 0);
  return name;
}

}  // namespace

bool CpuSupports(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kPortable:
      return true;
    case CpuIsa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case CpuIsa::kAvx512:
      return CpuSupports(CpuIsa::kAvx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
  return false;
}

std::string CheckCpuIsaOption(CpuIsaOption option) {
  const CpuIsa wanted = Wanted(option);
  if (CpuSupports(wanted)) return "";
  return StrCat("onnxsparse.cpu_isa=", CpuIsaName(wanted), " but this processor lacks it (it supports ",
                CpuIsaName(Best()), ")");
}

CpuIsa SelectCpuIsa() {
  const KernelContext context = CurrentKernelContext();
  const CpuIsaOption option = context.options->cpu_isa;
  CpuIsa isa = Wanted(option);
  if (!CpuSupports(isa)) isa = Best();  // refused at registration already; never an illegal instruction
  const OrtLogger* logger = KernelLogger(context.info);
  if (LogEnabled(logger, ORT_LOGGING_LEVEL_VERBOSE)) {
    ONNXSPARSE_LOG(logger, ORT_LOGGING_LEVEL_VERBOSE,
                   StrCat("onnxsparse: node '", NodeName(context.info), "': CPU kernels use ", CpuIsaName(isa),
                          option == CpuIsaOption::kAuto ? " (the best this processor has)"
                                                        : " (forced by onnxsparse.cpu_isa)"));
  }
  return isa;
}

const char* CpuIsaName(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kPortable: return "portable";
    case CpuIsa::kAvx2: return "avx2";
    case CpuIsa::kAvx512: return "avx512";
  }
  return "?";
}

}  // namespace onnxsparse::cpu
