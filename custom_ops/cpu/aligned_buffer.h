// A 64-byte-aligned fp32 work buffer (panels the kernels load whole vectors from).
#pragma once
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

namespace onnxsparse::cpu {

struct FreeAligned {
  void operator()(float* p) const { std::free(p); }
};
using AlignedFloats = std::unique_ptr<float[], FreeAligned>;

// Throws std::bad_alloc when out of memory (tasks turn it into a failed run).
inline AlignedFloats AllocateAligned(int64_t count) {
  const size_t bytes = (static_cast<size_t>(count) * sizeof(float) + 63) / 64 * 64;
  auto* p = static_cast<float*>(std::aligned_alloc(64, bytes > 0 ? bytes : 64));
  if (p == nullptr) throw std::bad_alloc();
  return AlignedFloats(p);
}

}  // namespace onnxsparse::cpu
