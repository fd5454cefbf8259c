// Memory (issue 19, item 6): once a kernel has packed its constant weight, ONNX Runtime's copy of the
// compressed pair is not read again on the fast path. When ONNX Runtime memory-mapped it from the
// model's external data file (it does so for external initializers on Linux), its pages are a clean
// file mapping: madvise(MADV_DONTNEED) drops them from the process's resident set, and a later read
// (the NaN fix-up reads the index) faults them back in from the file. Only then: never on anonymous
// or heap memory (that would zero it), never on a mapping with privately written (dirty) pages.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/ort_api.h"

namespace onnxsparse::cpu {

// Drops the whole pages of [data, data + bytes) when they lie in one file-backed mapping of this
// process without private dirty pages (read from /proc/self/smaps); returns the bytes released
// (0 otherwise, and on any other system than Linux).
size_t ReleaseFileBackedPages(const void* data, size_t bytes);

// The constant inputs first..last of a kernel (its compressed pair), each released as above.
size_t ReleaseConstantInputs(const OrtKernelInfo* info, size_t first, size_t last);

}  // namespace onnxsparse::cpu
