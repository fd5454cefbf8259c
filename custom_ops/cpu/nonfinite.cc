#include "cpu/nonfinite.h"

#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/float_convert.h"
#include "common/sparse_format.h"

namespace onnxsparse::cpu {

namespace {

// The exponent bits of T: a value is NaN or +-Inf when all of them are set.
template <typename T>
struct ExponentBits;
template <>
struct ExponentBits<float> {
  using Bits = uint32_t;
  static constexpr Bits kMask = 0x7F800000u;
};
template <>
struct ExponentBits<Ort::Float16_t> {
  using Bits = uint16_t;
  static constexpr Bits kMask = 0x7C00u;
};
template <>
struct ExponentBits<Ort::BFloat16_t> {
  using Bits = uint16_t;
  static constexpr Bits kMask = 0x7F80u;
};

template <typename T>
bool IsNonFinite(const T& value) {
  using E = ExponentBits<T>;
  typename E::Bits bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return (bits & E::kMask) == E::kMask;
}

// Whether element e (0..3) of a group is one of the two places its nibble selects.
bool Selected(uint8_t nibble, int64_t e) { return e == FirstOffset(nibble) || e == SecondOffset(nibble); }

template <typename T>
T NaN() {
  return FromFloat<T>(std::numeric_limits<float>::quiet_NaN());
}

}  // namespace

template <typename T>
bool AnyNonFinite(const T* data, int64_t count) {
  using E = ExponentBits<T>;
  static_assert(sizeof(T) == sizeof(typename E::Bits), "T is stored as its bits");
  const auto* bits = reinterpret_cast<const typename E::Bits*>(data);
  // Branch-free blocks that the compiler vectorises; one test per block ends the scan early.
  constexpr int64_t kBlock = 1024;
  for (int64_t begin = 0; begin < count; begin += kBlock) {
    const int64_t end = begin + kBlock < count ? begin + kBlock : count;
    typename E::Bits found = 0;
    for (int64_t i = begin; i < end; ++i) found |= static_cast<typename E::Bits>((bits[i] & E::kMask) == E::kMask);
    if (found != 0) return true;
  }
  return false;
}

template <typename T>
void PropagateNonFiniteMatMul(const T* a, int64_t m, int64_t k, int64_t row_stride, int64_t col_stride,
                              const uint8_t* index, int64_t n, T* y) {
  const int64_t index_per_row = IndexBytesPerRow(k);
  std::vector<int64_t> bad;  // reduction positions of this row's non-finite values
  for (int64_t i = 0; i < m; ++i) {
    bad.clear();
    for (int64_t kk = 0; kk < k; ++kk) {
      if (IsNonFinite(a[i * row_stride + kk * col_stride])) bad.push_back(kk);
    }
    if (bad.empty()) continue;
    for (int64_t j = 0; j < n; ++j) {
      const uint8_t* row = index + j * index_per_row;
      for (int64_t kk : bad) {
        if (!Selected(GroupNibble(row, kk / 4), kk % 4)) {
          y[i * n + j] = NaN<T>();
          break;
        }
      }
    }
  }
}

template <typename T>
void PropagateNonFiniteConv(const T* x, const ConvAttributes& attrs, const ConvGeometry& geo, const uint8_t* index,
                            T* y) {
  const int64_t kh_size = attrs.kernel_shape[0], kw_size = attrs.kernel_shape[1];
  const int64_t sh = attrs.strides[0], sw = attrs.strides[1];
  const int64_t dh = attrs.dilations[0], dw = attrs.dilations[1];
  const int64_t cpg = geo.channels_per_group, ocg = geo.out_channels_per_group;
  const int64_t plane = geo.height * geo.width, out_plane = geo.out_height * geo.out_width;
  const int64_t index_per_row = IndexBytesPerRow(geo.k);
  for (int64_t image = 0; image < geo.batch; ++image) {
    for (int64_t ci = 0; ci < geo.channels; ++ci) {
      const T* channel = x + (image * geo.channels + ci) * plane;
      if (!AnyNonFinite(channel, plane)) continue;
      const int64_t g = ci / cpg, c = ci % cpg;
      for (int64_t p = 0; p < plane; ++p) {
        if (!IsNonFinite(channel[p])) continue;
        const int64_t ih = p / geo.width, iw = p % geo.width;
        // Every tap (kh, kw) and output pixel (oh, ow) with oh * sh - pad_top + kh * dh = ih (and
        // the same along the width) multiplies this value by W[oc, c, kh, kw].
        for (int64_t kh = 0; kh < kh_size; ++kh) {
          const int64_t rh = ih + geo.pad_top - kh * dh;  // oh * sh
          if (rh < 0) break;
          if (rh % sh != 0 || rh / sh >= geo.out_height) continue;
          const int64_t oh = rh / sh;
          for (int64_t kw = 0; kw < kw_size; ++kw) {
            const int64_t rw = iw + geo.pad_left - kw * dw;
            if (rw < 0) break;
            if (rw % sw != 0 || rw / sw >= geo.out_width) continue;
            const int64_t ow = rw / sw;
            const int64_t kk = (kh * kw_size + kw) * cpg + c;
            for (int64_t oc = g * ocg; oc < (g + 1) * ocg; ++oc) {
              if (!Selected(GroupNibble(index + oc * index_per_row, kk / 4), kk % 4)) {
                y[(image * geo.out_channels + oc) * out_plane + oh * geo.out_width + ow] = NaN<T>();
              }
            }
          }
        }
      }
    }
  }
}

#define ONNXSPARSE_INSTANTIATE(T)                                                                              \
  template bool AnyNonFinite<T>(const T*, int64_t);                                                            \
  template void PropagateNonFiniteMatMul<T>(const T*, int64_t, int64_t, int64_t, int64_t, const uint8_t*, int64_t, \
                                            T*);                                                               \
  template void PropagateNonFiniteConv<T>(const T*, const ConvAttributes&, const ConvGeometry&, const uint8_t*, T*);
ONNXSPARSE_INSTANTIATE(float)
ONNXSPARSE_INSTANTIATE(Ort::Float16_t)
ONNXSPARSE_INSTANTIATE(Ort::BFloat16_t)
#undef ONNXSPARSE_INSTANTIATE

}  // namespace onnxsparse::cpu
