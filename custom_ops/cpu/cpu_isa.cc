#include "cpu/cpu_isa.h"

#include <cstdlib>
#include <cstring>

namespace onnxsparse::cpu {

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

CpuIsa SelectCpuIsa() {
  CpuIsa wanted = CpuIsa::kAvx512;
  if (const char* env = std::getenv("ONNXSPARSE_CPU_ISA"); env != nullptr) {
    if (std::strcmp(env, "portable") == 0) wanted = CpuIsa::kPortable;
    if (std::strcmp(env, "avx2") == 0) wanted = CpuIsa::kAvx2;
  }
  while (!CpuSupports(wanted)) wanted = static_cast<CpuIsa>(static_cast<int>(wanted) - 1);
  return wanted;
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
