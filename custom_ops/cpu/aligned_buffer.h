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

namespace onnxsparse::cpu {

// Per-thread work buffers, grown on demand and kept for the thread's life, so that a call does not
// map (and page-fault in) fresh memory: ONNX Runtime's pool threads and the calling thread persist.
// A slot serves one purpose at a time on a thread.
enum ScratchSlot { kScratchPanel = 0, kScratchTile = 1, kScratchOut = 2, kScratchSlots = 3 };

inline float* ThreadScratch(ScratchSlot slot, int64_t count) {
  thread_local AlignedFloats buffers[kScratchSlots];
  thread_local int64_t sizes[kScratchSlots] = {};
  if (sizes[slot] < count) {
    buffers[slot].reset();
    buffers[slot] = AllocateAligned(count);
    sizes[slot] = count;
  }
  return buffers[slot].get();
}

}  // namespace onnxsparse::cpu
