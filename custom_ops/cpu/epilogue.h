// The fused activation on the CPU (common/activation.h): applied in fp32 by each work item to the
// block of the output it has just finished (still in L1/L2), before any rounding to fp16/bf16.
#pragma once
#include <cstdint>

#include "common/activation.h"

namespace onnxsparse::cpu {

// c[r * ld + j] = act(c[r * ld + j]) for r < rows, j < cols. Does nothing for a null or kNone act.
void ActivateRows(const Activation* act, float* c, int64_t rows, int64_t cols, int64_t ld);

// y[i] = act(y[i]) for i < count, in fp32 and rounded once (the pass after the NaN/Inf fix-up).
// T: float, Ort::Float16_t, Ort::BFloat16_t.
template <typename T>
void ActivateOutput(const Activation& act, T* y, int64_t count);

}  // namespace onnxsparse::cpu
