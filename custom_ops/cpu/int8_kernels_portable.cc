// The portable int8 kernel (int8_kernels.h): plain C++ over the packed layout, int32 sums.
#include <cstring>

#include "cpu/int8_kernels.h"

namespace onnxsparse::cpu {

namespace {

void GemmPortable(const Int8PackedWeight& w, const Int8Task& task) {
  for (int64_t b = task.block_begin; b < task.block_end; ++b) {
    const int8_t* values = reinterpret_cast<const int8_t*>(ONNXSPARSE_INT8_VALUES(w, b));
    const uint8_t* index = ONNXSPARSE_INT8_INDEX(w, b);
    int32_t* c_block = task.c + (b - task.block_begin) * kInt8BlockN;
    for (int64_t i = 0; i < task.m; ++i) {
      const uint8_t* a = task.a + i * task.lda;
      int32_t acc[kInt8BlockN] = {};
      for (int64_t p = 0; p < w.pairs; ++p) {
        const uint8_t* a8 = a + 8 * p;
        const int8_t* v = values + p * 4 * kInt8BlockN;
        const uint8_t* sel = index + p * kInt8BlockN;
        for (int64_t n = 0; n < kInt8BlockN; ++n) {
          const unsigned s = sel[n];
          const int8_t* vn = v + 4 * n;
          acc[n] += a8[s & 3] * vn[0] + a8[(s >> 2) & 3] * vn[1] + a8[4 + ((s >> 4) & 3)] * vn[2] +
                    a8[4 + (s >> 6)] * vn[3];
        }
      }
      std::memcpy(c_block + i * task.ldc, acc, sizeof(acc));
    }
  }
}

}  // namespace

const Int8KernelSet kInt8KernelsPortable = {"portable", Int8Format::kPositions, &GemmPortable};

}  // namespace onnxsparse::cpu
