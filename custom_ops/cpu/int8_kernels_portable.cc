// The portable int8 kernel (int8_kernels.h): plain C++ over the packed layout, int32 sums.
#include <cstring>
#include <type_traits>

#include "common/ort_api.h"
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

// Round half to even of x (valid for |x| <= 2^22, which the clamp ensures; anything larger
// saturates anyway): adding 1.5 * 2^23 leaves no fraction bits, so the fp32 addition itself rounds,
// to nearest even as IEEE arithmetic does (the magic number is even). NaN (a NaN scale) clamps low.
inline int32_t RoundHalfEven(float x) {
  x = x > -4194304.0f ? x : -4194304.0f;
  x = x < 4194304.0f ? x : 4194304.0f;
  constexpr float kMagic = 12582912.0f;  // (x + c) - c is no identity in IEEE arithmetic: kept as written
  return static_cast<int32_t>((x + kMagic) - kMagic);
}

template <typename Y>
void EpilogueAs(const int32_t* acc, int64_t count, const Int8Epilogue& ep, int64_t n0, Y* out) {
  const int32_t* corr = ep.corr + n0;
  const float* scale = ep.scale + n0;
  for (int64_t j = 0; j < count; ++j) {
    // Wrapping int32 addition: exact whenever the true sum fits (docs/ops.md).
    const int32_t sum = static_cast<int32_t>(static_cast<uint32_t>(acc[j]) + static_cast<uint32_t>(corr[j]));
    float f = static_cast<float>(sum) * scale[j];
    if (ep.relu) f = f > 0.0f ? f : 0.0f;
    if constexpr (std::is_same_v<Y, float>) {
      out[j] = f;
    } else if constexpr (std::is_same_v<Y, uint16_t>) {
      out[j] = Ort::Float16_t(f).val;  // round to nearest even
    } else {
      constexpr int32_t lo = std::is_same_v<Y, uint8_t> ? 0 : -128;
      constexpr int32_t hi = std::is_same_v<Y, uint8_t> ? 255 : 127;
      int32_t q = RoundHalfEven(f) + ep.y_zero_point;
      q = q < lo ? lo : (q > hi ? hi : q);
      out[j] = static_cast<Y>(q);
    }
  }
}

void EpiloguePortable(const int32_t* acc, int64_t count, const Int8Epilogue& ep, int64_t n0, void* out) {
  switch (ep.out) {
    case Int8Out::kFloat: EpilogueAs(acc, count, ep, n0, static_cast<float*>(out)); break;
    case Int8Out::kUint8: EpilogueAs(acc, count, ep, n0, static_cast<uint8_t*>(out)); break;
    case Int8Out::kInt8: EpilogueAs(acc, count, ep, n0, static_cast<int8_t*>(out)); break;
    case Int8Out::kHalf: EpilogueAs(acc, count, ep, n0, static_cast<uint16_t*>(out)); break;
  }
}

}  // namespace

const Int8KernelSet kInt8KernelsPortable = {"portable", Int8Format::kPositions, &GemmPortable, &EpiloguePortable};

}  // namespace onnxsparse::cpu
