#include "cpu/epilogue.h"

#include <cmath>

#include "common/float_convert.h"
#include "common/ort_api.h"

namespace onnxsparse::cpu {

namespace {

// One loop per activation (the switch outside), so that the compiler vectorises the cheap ones.
template <typename Fn>
void ForRows(float* c, int64_t rows, int64_t cols, int64_t ld, Fn fn) {
  for (int64_t r = 0; r < rows; ++r) {
    float* __restrict row = c + r * ld;
    for (int64_t j = 0; j < cols; ++j) row[j] = fn(row[j]);
  }
}

}  // namespace

void ActivateRows(const Activation* act, float* c, int64_t rows, int64_t cols, int64_t ld) {
  if (act == nullptr || rows <= 0 || cols <= 0) return;
  const float a = act->a, b = act->b;
  switch (act->kind) {
    case ActivationKind::kNone:
      return;
    case ActivationKind::kRelu:
      return ForRows(c, rows, cols, ld, [](float x) { return x < 0.0f ? 0.0f : x; });
    case ActivationKind::kClip:
      return ForRows(c, rows, cols, ld, [a, b](float x) { return x < a ? a : (x > b ? b : x); });
    case ActivationKind::kHardSigmoid:
      return ForRows(c, rows, cols, ld, [a, b](float x) {
        const float t = a * x + b;
        return t < 0.0f ? 0.0f : (t > 1.0f ? 1.0f : t);
      });
    case ActivationKind::kHardSwish:
      return ForRows(c, rows, cols, ld, [a, b](float x) {
        const float t = a * x + b;
        return x * (t < 0.0f ? 0.0f : (t > 1.0f ? 1.0f : t));
      });
    case ActivationKind::kLeakyRelu:
      return ForRows(c, rows, cols, ld, [a](float x) { return x >= 0.0f ? x : a * x; });
    case ActivationKind::kSigmoid:
    case ActivationKind::kGelu: {
      const Activation copy = *act;
      return ForRows(c, rows, cols, ld, [copy](float x) { return Activate(copy, x); });
    }
  }
}

template <typename T>
void ActivateOutput(const Activation& act, T* y, int64_t count) {
  if (act.none()) return;
  for (int64_t i = 0; i < count; ++i) y[i] = FromFloat<T>(Activate(act, ToFloat(y[i])));
}

template void ActivateOutput<float>(const Activation&, float*, int64_t);
template void ActivateOutput<Ort::Float16_t>(const Activation&, Ort::Float16_t*, int64_t);
template void ActivateOutput<Ort::BFloat16_t>(const Activation&, Ort::BFloat16_t*, int64_t);

}  // namespace onnxsparse::cpu
