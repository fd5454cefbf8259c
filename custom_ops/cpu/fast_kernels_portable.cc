// Portable inner kernels over a PackedWeight (see fast_kernels.h): the same tiles as the AVX
// variants in plain C++ (16-lane loops the compiler vectorises for baseline x86-64), and the
// run-time choice among the ISA variants.
#include <algorithm>
#include <cstring>

#include "common/ort_api.h"
#include "cpu/fast_kernels.h"

namespace onnxsparse::cpu {

namespace {

inline float HalfBitsToFloat(uint16_t bits) { return Ort::Float16_t::FromBits(bits).ToFloat(); }

// The 16 values of one record's slot (0 or 1) as fp32.
inline void RecordValues(const PackedWeight& w, const uint8_t* record, int slot, float* out) {
  const uint8_t* src = record + slot * kBlockN * w.value_bytes;
  if (w.fp16) {
    uint16_t bits[kBlockN];
    std::memcpy(bits, src, sizeof(bits));
    for (int64_t l = 0; l < kBlockN; ++l) out[l] = HalfBitsToFloat(bits[l]);
  } else {
    std::memcpy(out, src, kBlockN * sizeof(float));
  }
}

inline float Epilogue(float acc, float* c, const KBlock& kb, int64_t n) {
  if (kb.accumulate) acc += *c;
  if (kb.final) acc = acc * kb.alpha + (kb.bias != nullptr ? kb.bias[n] : 0.0f);
  return acc;
}

constexpr int kMr = 4;

void RowsKernel(const PackedWeight& w, const RowsTask& t) {
  for (int64_t i0 = 0; i0 < t.m; i0 += kMr) {
    const int rows = static_cast<int>(std::min<int64_t>(kMr, t.m - i0));
    for (int64_t block = t.block_begin; block < t.block_end; ++block) {
      float acc[kMr][kBlockN] = {};
      const uint8_t* rec = ONNXSPARSE_RECORD(w, block, t.kb.g_begin);
      for (int64_t g = t.kb.g_begin; g < t.kb.g_end; ++g, rec += w.group_stride) {
        float v0[kBlockN], v1[kBlockN];
        RecordValues(w, rec, 0, v0);
        RecordValues(w, rec, 1, v1);
        const uint8_t* sel = rec + 2 * kBlockN * w.value_bytes;
        for (int r = 0; r < rows; ++r) {
          const float* x = t.a + (i0 + r) * t.lda + 4 * g;
          for (int64_t l = 0; l < kBlockN; ++l) acc[r][l] += x[sel[l] & 3] * v0[l] + x[sel[l] >> 2] * v1[l];
        }
      }
      const int64_t n0 = block * kBlockN;
      const int64_t lanes = std::min<int64_t>(kBlockN, w.rows - n0);
      for (int r = 0; r < rows; ++r) {
        float* c = t.c + (i0 + r) * t.ldc + n0;
        for (int64_t l = 0; l < lanes; ++l) c[l] = Epilogue(acc[r][l], c + l, t.kb, n0 + l);
      }
    }
  }
}

void ColsKernel(const PackedWeight& w, const ColsTask& t) {
  constexpr int64_t ldp = kStripCols;
  for (int64_t j0 = 0; j0 < t.cols; j0 += kStripCols) {
    const int64_t cols = std::min(kStripCols, t.cols - j0);
    const float* strip = t.p + (j0 / kStripCols) * t.strip_stride;
    for (int64_t n = t.n_begin; n < t.n_end; ++n) {
      const int64_t lane = n % kBlockN;
      const uint8_t* rec = ONNXSPARSE_RECORD(w, n / kBlockN, t.kb.g_begin);
      float acc[kStripCols] = {};
      const float* p_group = strip;
      for (int64_t g = t.kb.g_begin; g < t.kb.g_end; ++g, rec += w.group_stride, p_group += 4 * ldp) {
        float v0[kBlockN], v1[kBlockN];
        RecordValues(w, rec, 0, v0);
        RecordValues(w, rec, 1, v1);
        const uint8_t s = rec[2 * kBlockN * w.value_bytes + lane];
        const float* row0 = p_group + (s & 3) * ldp;
        const float* row1 = p_group + (s >> 2) * ldp;
        for (int64_t j = 0; j < cols; ++j) acc[j] += row0[j] * v0[lane] + row1[j] * v1[lane];
      }
      float* c = t.c + (n - t.n_begin) * t.ldc + j0;
      for (int64_t j = 0; j < cols; ++j) c[j] = Epilogue(acc[j], c + j, t.kb, n);
    }
  }
}

void HalfToFloat(const uint16_t* src, float* dst, int64_t count) {
  for (int64_t i = 0; i < count; ++i) dst[i] = HalfBitsToFloat(src[i]);
}

void FloatToHalf(const float* src, uint16_t* dst, int64_t count) {
  for (int64_t i = 0; i < count; ++i) dst[i] = Ort::Float16_t(src[i]).val;
}

}  // namespace

const FastKernelSet kFastKernelsPortable = {RowsKernel, ColsKernel, HalfToFloat, FloatToHalf};

const FastKernelSet& FastKernels(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512: return kFastKernelsAvx512;
    case CpuIsa::kAvx2: return kFastKernelsAvx2;
    case CpuIsa::kPortable: break;
  }
  return kFastKernelsPortable;
}

}  // namespace onnxsparse::cpu
