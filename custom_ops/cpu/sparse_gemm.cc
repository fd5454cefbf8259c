// The portable inner kernel of SparseGemm: one packed tile of A against a block of compressed rows
// of W. Written so the compiler vectorises the kTileM-wide accumulate; an AVX-512 variant of
// SparseGemmTile can replace it at run time without touching the callers.
#include "cpu/sparse_gemm.h"

#include "common/float_convert.h"
#include "common/sparse_format.h"

namespace onnxsparse::cpu {

namespace {

// acc[i] += v0 * a0[i] + v1 * a1[i] for the first Lanes lanes of a panel row pair.
template <int Lanes>
inline void AccumulatePair(float* __restrict acc, const float* __restrict a0, const float* __restrict a1, float v0,
                           float v1) {
  for (int i = 0; i < Lanes; ++i) acc[i] += v0 * a0[i] + v1 * a1[i];
}

// Adds the group with this nibble, at panel rows [4g, 4g + 4), to acc; returns 1 when the nibble
// is invalid (a field of 3), 0 otherwise.
template <int Lanes, typename T>
inline uint8_t AccumulateGroup(float* acc, const float* group_panel, uint8_t nibble, const T* group_values) {
  const float* a0 = group_panel + FirstOffset(nibble) * kTileM;
  const float* a1 = group_panel + SecondOffset(nibble) * kTileM;
  AccumulatePair<Lanes>(acc, a0, a1, ToFloat(group_values[0]), ToFloat(group_values[1]));
  return NibbleIsValid(nibble) ? 0 : 1;
}

// The tile kernel for the first Lanes (>= mc) lanes of the panel: a tile with few rows of A (a
// single token) does not pay for kTileM lanes.
template <int Lanes, typename T>
bool TileKernel(const float* panel, int64_t mc, int64_t k, int64_t m0, const GemmTarget<T>& target, float alpha,
                int64_t n_begin, int64_t n_end) {
  const int64_t groups = k / 4;
  const int64_t values_per_row = ValuesPerRow(k);
  const int64_t index_per_row = IndexBytesPerRow(k);
  uint8_t invalid = 0;
  alignas(64) float acc[Lanes];
  for (int64_t n = n_begin; n < n_end; ++n) {
    const T* values = target.values + n * values_per_row;
    const uint8_t* index = target.index + n * index_per_row;
    for (int i = 0; i < Lanes; ++i) acc[i] = 0.0f;
    // Two groups per index byte: low nibble, then high nibble.
    int64_t g = 0;
    for (; g + 1 < groups; g += 2) {
      const uint8_t byte = index[g >> 1];
      invalid |= AccumulateGroup<Lanes>(acc, panel + 4 * g * kTileM, static_cast<uint8_t>(byte & 0xF), values + 2 * g);
      invalid |= AccumulateGroup<Lanes>(acc, panel + 4 * (g + 1) * kTileM, static_cast<uint8_t>(byte >> 4),
                                        values + 2 * (g + 1));
    }
    if (g < groups) {
      invalid |= AccumulateGroup<Lanes>(acc, panel + 4 * g * kTileM, static_cast<uint8_t>(index[g >> 1] & 0xF),
                                        values + 2 * g);
    }
    const float bias = target.bias != nullptr ? ToFloat(target.bias[n]) : 0.0f;
    T* out = target.out + m0 * target.out_stride_m + n * target.out_stride_n;
    if (target.act.none()) {
      for (int64_t i = 0; i < mc; ++i) out[i * target.out_stride_m] = FromFloat<T>(alpha * acc[i] + bias);
    } else {
      for (int64_t i = 0; i < mc; ++i) {
        out[i * target.out_stride_m] = FromFloat<T>(Activate(target.act, alpha * acc[i] + bias));
      }
    }
  }
  return invalid == 0;
}

}  // namespace

template <typename T>
bool SparseGemmTile(const float* panel, int64_t mc, int64_t k, int64_t m0, const GemmTarget<T>& target,
                    float alpha, int64_t n_begin, int64_t n_end) {
  static_assert(kTileM == 16, "the lane widths below assume 16-row tiles");
  if (mc <= 4) return TileKernel<4>(panel, mc, k, m0, target, alpha, n_begin, n_end);
  if (mc <= 8) return TileKernel<8>(panel, mc, k, m0, target, alpha, n_begin, n_end);
  return TileKernel<16>(panel, mc, k, m0, target, alpha, n_begin, n_end);
}

template bool SparseGemmTile<float>(const float*, int64_t, int64_t, int64_t, const GemmTarget<float>&, float, int64_t,
                                    int64_t);
template bool SparseGemmTile<Ort::Float16_t>(const float*, int64_t, int64_t, int64_t,
                                             const GemmTarget<Ort::Float16_t>&, float, int64_t, int64_t);
template bool SparseGemmTile<Ort::BFloat16_t>(const float*, int64_t, int64_t, int64_t,
                                              const GemmTarget<Ort::BFloat16_t>&, float, int64_t, int64_t);

}  // namespace onnxsparse::cpu
