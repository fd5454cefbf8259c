// The activation fused into a sparse op's epilogue (docs/ops.md, attributes `activation` and
// `activation_params`): applied in fp32 to alpha * product + bias, before the one rounding to the
// output dtype. The definitions are ONNX's (those ONNX Runtime fuses into Conv and Gemm):
//   Relu         max(0, x)
//   Clip         min(max(x, lo), hi)                       params [lo, hi]
//   HardSigmoid  max(0, min(1, a x + b))                   params [a, b]   (default 0.2, 0.5)
//   HardSwish    x max(0, min(1, a x + b))                 params [a, b]   (default 1/6, 0.5)
//   Sigmoid      1 / (1 + exp(-x))
//   LeakyRelu    x >= 0 ? x : a x                          params [a]      (default 0.01)
//   Gelu         0.5 x (1 + erf(x / sqrt(2)))              (the exact form; no params)
// NaN stays NaN (as ONNX's reference). Shared by the CPU and the CUDA kernels (host/device).
#pragma once
#include <cmath>
#include <string>
#include <vector>

#if defined(__CUDACC__)
#define ONNXSPARSE_HOST_DEVICE __host__ __device__
#else
#define ONNXSPARSE_HOST_DEVICE
#endif

namespace onnxsparse {

enum class ActivationKind : int {
  kNone = 0,
  kRelu,
  kClip,
  kHardSigmoid,
  kHardSwish,
  kSigmoid,
  kLeakyRelu,
  kGelu,
};

struct Activation {
  ActivationKind kind = ActivationKind::kNone;
  float a = 0.0f;  // Clip: lo; HardSigmoid, HardSwish, LeakyRelu: alpha
  float b = 0.0f;  // Clip: hi; HardSigmoid, HardSwish: beta

  bool none() const { return kind == ActivationKind::kNone; }
};

ONNXSPARSE_HOST_DEVICE inline float Activate(const Activation& act, float x) {
  switch (act.kind) {
    case ActivationKind::kNone:
      return x;
    case ActivationKind::kRelu:
      return x < 0.0f ? 0.0f : x;
    case ActivationKind::kClip:
      return x < act.a ? act.a : (x > act.b ? act.b : x);
    case ActivationKind::kHardSigmoid: {
      const float t = act.a * x + act.b;
      return t < 0.0f ? 0.0f : (t > 1.0f ? 1.0f : t);
    }
    case ActivationKind::kHardSwish: {
      const float t = act.a * x + act.b;
      return x * (t < 0.0f ? 0.0f : (t > 1.0f ? 1.0f : t));
    }
    case ActivationKind::kSigmoid:
      return 1.0f / (1.0f + expf(-x));
    case ActivationKind::kLeakyRelu:
      return x >= 0.0f ? x : act.a * x;
    case ActivationKind::kGelu:
      return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
  }
  return x;
}

// The activation named `name` with `params` (docs/ops.md); returns an error message, empty when fine.
inline std::string ParseActivation(const std::string& name, const std::vector<float>& params, Activation& out) {
  struct Entry {
    const char* name;
    ActivationKind kind;
    size_t min_params, max_params;
    float a, b;  // defaults
  };
  static const Entry kEntries[] = {
      {"", ActivationKind::kNone, 0, 0, 0.0f, 0.0f},
      {"Relu", ActivationKind::kRelu, 0, 0, 0.0f, 0.0f},
      {"Clip", ActivationKind::kClip, 2, 2, 0.0f, 0.0f},
      {"HardSigmoid", ActivationKind::kHardSigmoid, 0, 2, 0.2f, 0.5f},
      {"HardSwish", ActivationKind::kHardSwish, 0, 2, 1.0f / 6.0f, 0.5f},
      {"Sigmoid", ActivationKind::kSigmoid, 0, 0, 0.0f, 0.0f},
      {"LeakyRelu", ActivationKind::kLeakyRelu, 0, 1, 0.01f, 0.0f},
      {"Gelu", ActivationKind::kGelu, 0, 0, 0.0f, 0.0f},
  };
  for (const Entry& entry : kEntries) {
    if (name != entry.name) continue;
    if (params.size() < entry.min_params || params.size() > entry.max_params) {
      return "attribute 'activation_params' of activation '" + name + "' must hold " +
             std::to_string(entry.min_params) +
             (entry.max_params != entry.min_params ? " to " + std::to_string(entry.max_params) : std::string()) +
             " floats, got " + std::to_string(params.size());
    }
    out.kind = entry.kind;
    out.a = params.size() > 0 ? params[0] : entry.a;
    out.b = params.size() > 1 ? params[1] : entry.b;
    if (out.kind == ActivationKind::kClip && std::isnan(out.a)) out.a = -INFINITY;
    if (out.kind == ActivationKind::kClip && std::isnan(out.b)) out.b = INFINITY;
    return {};
  }
  return "attribute 'activation' is '" + name +
         "', not one of Relu, Clip, HardSigmoid, HardSwish, Sigmoid, LeakyRelu, Gelu";
}

}  // namespace onnxsparse
