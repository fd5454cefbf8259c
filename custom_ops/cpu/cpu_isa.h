// Which instruction set the fast CPU kernels use. Chosen once per kernel, when ONNX Runtime creates
// it: the best the processor supports (cpuid), or the one the session's `onnxsparse.cpu_isa`
// entry (or its developer override ONNXSPARSE_CPU_ISA) forces, see common/runtime_options.h.
// Forcing an ISA the processor lacks is refused when the library is registered, never run into an
// illegal instruction.
#pragma once
#include <string>

#include "common/runtime_options.h"

namespace onnxsparse::cpu {

enum class CpuIsa { kPortable, kAvx2, kAvx512 };

// The processor supports this ISA (AVX-512 F/BW/VL/DQ; AVX2 with FMA and F16C).
bool CpuSupports(CpuIsa isa);

// "" when `option` can run on this processor, else why not (checked at registration).
std::string CheckCpuIsaOption(CpuIsaOption option);

// The ISA a kernel created now uses: its registration's option (CurrentKernelContext), the best
// the processor has for kAuto. Logs the choice at VERBOSE on the session's logger.
CpuIsa SelectCpuIsa();

const char* CpuIsaName(CpuIsa isa);

}  // namespace onnxsparse::cpu
