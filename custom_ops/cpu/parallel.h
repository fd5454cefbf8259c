// Runs fn(item) for item in [0, items) on ONNX Runtime's intra-op thread pool (the session's
// intra_op_num_threads), one item per pool task so that busy cores even out. Nothing escapes
// into the pool: an exception marks the run failed.
#pragma once
#include <atomic>
#include <cstdint>

#include "common/ort_api.h"

namespace onnxsparse::cpu {

template <typename Fn>
bool ParallelItems(OrtKernelContext* context, int64_t items, const Fn& fn) {
  struct Run {
    const Fn* fn;
    std::atomic<bool> failed{false};
    static void Task(void* self, size_t item) {
      auto* run = static_cast<Run*>(self);
      try {
        (*run->fn)(static_cast<int64_t>(item));
      } catch (...) {
        run->failed.store(true, std::memory_order_relaxed);
      }
    }
  } run;
  run.fn = &fn;
  if (items <= 0) return true;
  if (items == 1) {
    Run::Task(&run, 0);
  } else {
    Ort::KernelContext(context).ParallelFor(&Run::Task, static_cast<size_t>(items), 0, &run);
  }
  return !run.failed.load();
}

}  // namespace onnxsparse::cpu
