// Which instruction set the fast CPU kernels use. Chosen once per kernel, when ONNX Runtime creates
// it: the best the processor supports (cpuid), or the one ONNXSPARSE_CPU_ISA=avx512|avx2|portable
// forces (tests run every path this way). A forced ISA the processor lacks falls back to the best
// it has, never to an illegal instruction.
#pragma once

namespace onnxsparse::cpu {

enum class CpuIsa { kPortable, kAvx2, kAvx512 };

// The processor supports this ISA (AVX-512 F/BW/VL/DQ; AVX2 with FMA and F16C).
bool CpuSupports(CpuIsa isa);

// The ISA a kernel created now uses (reads ONNXSPARSE_CPU_ISA each time, so tests can switch it).
CpuIsa SelectCpuIsa();

const char* CpuIsaName(CpuIsa isa);

}  // namespace onnxsparse::cpu
