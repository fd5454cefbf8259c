// The fast MatMulCompress product over a PackedWeight: C = alpha * A @ W + bias in fp32, blocked
// for the caches and spread over ONNX Runtime's intra-op threads.
#pragma once
#include <cstdint>

#include "common/ort_api.h"
#include "common/activation.h"
#include "cpu/fast_kernels.h"

namespace onnxsparse::cpu {

// A: [m, K] row-major (lda = K); C: [m, N] row-major (ldc = N); bias: [N] or null; act: the fused
// activation (or null), applied by each item to its finished block of C. Returns false when a task
// failed (out of memory).
bool FastMatMul(OrtKernelContext* context, const FastKernelSet& kernels, const PackedWeight& w, const float* a,
                int64_t m, float* c, const float* bias, float alpha, const Activation* act = nullptr);

}  // namespace onnxsparse::cpu
