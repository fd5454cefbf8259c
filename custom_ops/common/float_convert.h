// The element types the kernels support and their conversions to and from fp32: kernels compute
// in fp32 and round once when they store (fp16/bf16 accumulate in fp32, as dense kernels do).
#pragma once
#include "common/ort_api.h"

namespace onnxsparse {

inline float ToFloat(float v) { return v; }
inline float ToFloat(Ort::Float16_t v) { return v.ToFloat(); }
inline float ToFloat(Ort::BFloat16_t v) { return v.ToFloat(); }

template <typename T>
inline T FromFloat(float v) { return T(v); }
template <>
inline float FromFloat<float>(float v) { return v; }

// The name of a dtype in error messages.
template <typename T> constexpr const char* DtypeName();
template <> constexpr const char* DtypeName<float>() { return "float"; }
template <> constexpr const char* DtypeName<Ort::Float16_t>() { return "float16"; }
template <> constexpr const char* DtypeName<Ort::BFloat16_t>() { return "bfloat16"; }

}  // namespace onnxsparse
