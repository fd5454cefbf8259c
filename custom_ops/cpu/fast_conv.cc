#include "cpu/fast_conv.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/float_convert.h"
#include "cpu/aligned_buffer.h"
#include "cpu/parallel.h"

namespace onnxsparse::cpu {

namespace {

constexpr int64_t kTilePixels = 256;   // output pixels per item
constexpr int64_t kBlockGroups = 32;   // groups of K per cache block: a 128 x 256 fp32 panel
constexpr int64_t kWantedItems = 8;    // split the features when pixels alone give fewer items

int64_t CeilDiv(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

template <typename T>
struct Im2col {
  const ConvAttributes& attrs;
  const ConvGeometry& geo;

  // The Cols panel (strips of kStripCols pixels, strip_stride apart) of the pixels [p0, p0 + pixels)
  // for the reduction rows [k_begin, k_end): row kk = (kh * KW + kw) * C/group + c holds
  // X_group[c, ih, iw] of each pixel, zero where the tap falls in the padding. For a 1x1
  // convolution with stride 1 and no padding this is a plain copy of channel rows.
  void Fill(const T* x_group, int64_t k_begin, int64_t k_end, int64_t p0, int64_t pixels, float* panel,
            int64_t strip_stride) const {
    const int64_t cg = geo.channels_per_group, kw_size = attrs.kernel_shape[1];
    const int64_t sh = attrs.strides[0], sw = attrs.strides[1];
    const int64_t dh = attrs.dilations[0], dw = attrs.dilations[1];
    const int64_t plane = geo.height * geo.width;
    for (int64_t kk = k_begin; kk < k_end; ++kk) {
      const int64_t kh = kk / (kw_size * cg), kw = (kk / cg) % kw_size, c = kk % cg;
      const T* src = x_group + c * plane;
      float* dst = panel + (kk - k_begin) * kStripCols;
      const int64_t iw_base = kw * dw - geo.pad_left;
      // Output columns ow whose tap iw = ow * sw + iw_base lies in [0, W).
      const int64_t ow_lo = iw_base >= 0 ? 0 : CeilDiv(-iw_base, sw);
      const int64_t ow_hi = geo.width - iw_base <= 0 ? 0 : CeilDiv(geo.width - iw_base, sw);
      for (int64_t j = 0, p = p0; j < pixels;) {
        // A run of pixels on one output row and in one strip.
        const int64_t oh = p / geo.out_width, ow0 = p % geo.out_width;
        const int64_t run = std::min({geo.out_width - ow0, pixels - j, kStripCols - j % kStripCols});
        const int64_t ih = oh * sh - geo.pad_top + kh * dh;
        float* out = dst + (j / kStripCols) * strip_stride + j % kStripCols;
        if (ih < 0 || ih >= geo.height) {
          std::fill(out, out + run, 0.0f);
        } else {
          const int64_t lo = std::clamp<int64_t>(ow_lo - ow0, 0, run);
          const int64_t hi = std::clamp<int64_t>(ow_hi - ow0, lo, run);
          std::fill(out, out + lo, 0.0f);
          const T* row = src + ih * geo.width + (ow0 + lo) * sw + iw_base;
          if (sw == 1) {
            if constexpr (std::is_same_v<T, float>) {
              std::memcpy(out + lo, row, static_cast<size_t>(hi - lo) * sizeof(float));
            } else {
              for (int64_t t = 0; t < hi - lo; ++t) out[lo + t] = ToFloat(row[t]);
            }
          } else {
            for (int64_t t = 0; t < hi - lo; ++t) out[lo + t] = ToFloat(row[t * sw]);
          }
          std::fill(out + hi, out + run, 0.0f);
        }
        j += run;
        p += run;
      }
    }
  }
};

}  // namespace

template <typename T>
bool FastConv(OrtKernelContext* context, const FastKernelSet& kernels, const PackedWeight& w,
              const ConvAttributes& attrs, const ConvGeometry& geo, const T* x, const float* bias, T* y) {
  constexpr bool kFloat = std::is_same_v<T, float>;
  const int64_t pixels = geo.out_height * geo.out_width;
  const int64_t plane = geo.height * geo.width;
  const int64_t groups = attrs.group;
  const int64_t ocg = geo.out_channels_per_group;
  const int64_t pixel_tiles = (pixels + kTilePixels - 1) / kTilePixels;
  const int64_t base_items = geo.batch * groups * pixel_tiles;
  int64_t n_chunks = std::max<int64_t>(1, (kWantedItems + base_items - 1) / base_items);
  n_chunks = std::min(n_chunks, std::max<int64_t>(1, ocg / 16));
  const int64_t chunk_n = (ocg + n_chunks - 1) / n_chunks;
  const Im2col<T> im2col{attrs, geo};

  auto item = [&](int64_t index) {
    const int64_t nc = index % n_chunks;
    const int64_t tile = (index / n_chunks) % pixel_tiles;
    const int64_t batch = index / (n_chunks * pixel_tiles);
    const int64_t image = batch / groups, g = batch % groups;
    const int64_t p0 = tile * kTilePixels;
    const int64_t pc = std::min(kTilePixels, pixels - p0);
    const int64_t n_begin = g * ocg + nc * chunk_n;
    const int64_t n_end = std::min((g + 1) * ocg, n_begin + chunk_n);
    if (n_begin >= n_end) return;
    const T* x_group = x + (image * geo.channels + g * geo.channels_per_group) * plane;

    constexpr int64_t kStripStride = 4 * kBlockGroups * kStripCols;
    AlignedFloats panel = AllocateAligned(kStripStride * ((kTilePixels + kStripCols - 1) / kStripCols));
    std::vector<float> scratch(kFloat ? 0 : static_cast<size_t>((n_end - n_begin) * pc));
    ColsTask task;
    task.cols = pc;
    task.n_begin = n_begin;
    task.n_end = n_end;
    if constexpr (kFloat) {
      task.c = y + (image * geo.out_channels + n_begin) * pixels + p0;
      task.ldc = pixels;
    } else {
      task.c = scratch.data();
      task.ldc = pc;
    }
    task.kb.bias = bias;
    for (int64_t gk = 0; gk < w.groups; gk += kBlockGroups) {
      task.kb.g_begin = gk;
      task.kb.g_end = std::min(w.groups, gk + kBlockGroups);
      task.kb.accumulate = gk > 0;
      task.kb.final = task.kb.g_end == w.groups;
      im2col.Fill(x_group, 4 * task.kb.g_begin, 4 * task.kb.g_end, p0, pc, panel.get(), kStripStride);
      task.p = panel.get();
      task.strip_stride = kStripStride;
      kernels.cols(w, task);
    }
    if constexpr (!kFloat) {
      for (int64_t n = n_begin; n < n_end; ++n) {
        const float* src = scratch.data() + (n - n_begin) * pc;
        T* dst = y + (image * geo.out_channels + n) * pixels + p0;
        if constexpr (std::is_same_v<T, Ort::Float16_t>) {
          kernels.float_to_half(src, reinterpret_cast<uint16_t*>(dst), pc);
        } else {
          for (int64_t j = 0; j < pc; ++j) dst[j] = FromFloat<T>(src[j]);
        }
      }
    }
  };
  return ParallelItems(context, base_items * n_chunks, item);
}

template bool FastConv<float>(OrtKernelContext*, const FastKernelSet&, const PackedWeight&, const ConvAttributes&,
                              const ConvGeometry&, const float*, const float*, float*);
template bool FastConv<Ort::Float16_t>(OrtKernelContext*, const FastKernelSet&, const PackedWeight&,
                                       const ConvAttributes&, const ConvGeometry&, const Ort::Float16_t*, const float*,
                                       Ort::Float16_t*);
template bool FastConv<Ort::BFloat16_t>(OrtKernelContext*, const FastKernelSet&, const PackedWeight&,
                                        const ConvAttributes&, const ConvGeometry&, const Ort::BFloat16_t*,
                                        const float*, Ort::BFloat16_t*);

}  // namespace onnxsparse::cpu
