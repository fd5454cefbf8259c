#include "cpu/fast_conv.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/float_convert.h"
#include "cpu/aligned_buffer.h"
#include "cpu/epilogue.h"
#include "cpu/parallel.h"

namespace onnxsparse::cpu {

namespace {

constexpr int64_t kTilePixels = 128;   // output pixels per item (two strips)
constexpr int64_t kBlockGroups = 64;   // groups of K per cache block: 256 rows x 64 pixels = 64 KiB a strip
constexpr int64_t kWantedItems = 8;    // split the features when pixels alone give fewer items

// ceil(a / b) for b > 0, without forming a + b (a stride may be as large as int64 allows).
int64_t CeilDiv(int64_t a, int64_t b) { return a >= 0 ? a / b + (a % b != 0 ? 1 : 0) : -((-a) / b); }

// A run of a tile's pixels that lie on one output row and in one strip of the panel.
struct PixelRun {
  int64_t j;        // first pixel, relative to the tile
  int64_t length;
  int64_t oh, ow0;  // its output row and first output column
};

template <typename T>
struct Im2col {
  const ConvAttributes& attrs;
  const ConvGeometry& geo;
  const FastKernelSet& kernels;  // fp16 -> fp32 conversion of whole runs
  // A 1x1 convolution with stride 1 and no padding: panel rows are runs of X's channel rows.
  bool contiguous = false;

  // The runs of the pixels [p0, p0 + pixels), computed once per tile (divisions stay out of Fill).
  void Runs(int64_t p0, int64_t pixels, std::vector<PixelRun>& runs) const {
    runs.clear();
    for (int64_t j = 0, p = p0; j < pixels;) {
      const int64_t oh = p / geo.out_width, ow0 = p % geo.out_width;
      int64_t length = std::min(pixels - j, kStripCols - j % kStripCols);
      if (!contiguous) length = std::min(length, geo.out_width - ow0);
      runs.push_back({j, length, oh, ow0});
      j += length;
      p += length;
    }
  }

  // Where one run reads for one kernel tap (kh, kw), the same for every channel: dst is the run's
  // offset in the panel row, src its first input pixel in a channel plane; [lo, hi) of its
  // length come from the input, the rest is padding (all of it when `zero`).
  struct Segment {
    int64_t dst, src, lo, hi, length;
    bool zero;
  };

  void Segments(int64_t kh, int64_t kw, const std::vector<PixelRun>& runs, int64_t strip_stride,
                std::vector<Segment>& segments) const {
    segments.clear();
    const int64_t sh = attrs.strides[0], sw = attrs.strides[1];
    const int64_t dh = attrs.dilations[0], dw = attrs.dilations[1];
    const int64_t p0 = runs.front().oh * geo.out_width + runs.front().ow0;
    const int64_t iw_base = kw * dw - geo.pad_left;
    // Output columns ow whose tap iw = ow * sw + iw_base lies in [0, W).
    const int64_t ow_lo = iw_base >= 0 ? 0 : CeilDiv(-iw_base, sw);
    const int64_t ow_hi = geo.width - iw_base <= 0 ? 0 : CeilDiv(geo.width - iw_base, sw);
    for (const PixelRun& run : runs) {
      Segment seg{(run.j / kStripCols) * strip_stride + run.j % kStripCols, 0, 0, run.length, run.length, false};
      if (contiguous) {
        seg.src = p0 + run.j;
      } else {
        const int64_t ih = run.oh * sh - geo.pad_top + kh * dh;
        seg.zero = ih < 0 || ih >= geo.height;
        seg.lo = std::clamp<int64_t>(ow_lo - run.ow0, 0, run.length);
        seg.hi = std::clamp<int64_t>(ow_hi - run.ow0, seg.lo, run.length);
        seg.src = seg.zero ? 0 : ih * geo.width + (run.ow0 + seg.lo) * sw + iw_base;
      }
      segments.push_back(seg);
    }
  }

  // The Cols panel (strips of kStripCols pixels, strip_stride apart) of the tile's pixels (runs)
  // for the reduction rows [k_begin, k_end): row kk = (kh * KW + kw) * C/group + c holds
  // X_group[c, ih, iw] of each pixel, zero where the tap falls in the padding. The geometry is
  // worked out once per tap, then applied to each of its channels.
  void Fill(const T* x_group, int64_t k_begin, int64_t k_end, const std::vector<PixelRun>& runs, float* panel,
            int64_t strip_stride) const {
    const int64_t cg = geo.channels_per_group, kw_size = attrs.kernel_shape[1];
    const int64_t sw = contiguous ? 1 : attrs.strides[1];
    const int64_t plane = geo.height * geo.width;
    std::vector<Segment> segments;
    for (int64_t kk = k_begin; kk < k_end;) {
      const int64_t tap = kk / cg, c_begin = kk % cg;
      const int64_t c_end = std::min(cg, c_begin + (k_end - kk));
      Segments(tap / kw_size, tap % kw_size, runs, strip_stride, segments);
      for (int64_t c = c_begin; c < c_end; ++c) {
        const T* src = x_group + c * plane;
        float* dst = panel + (kk + (c - c_begin) - k_begin) * kStripCols;
        for (const Segment& seg : segments) {
          float* out = dst + seg.dst;
          if (seg.zero) {
            Zero(out, seg.length);
            continue;
          }
          Zero(out, seg.lo);
          Copy(src + seg.src, sw, out + seg.lo, seg.hi - seg.lo);
          Zero(out + seg.hi, seg.length - seg.hi);
        }
      }
      kk += c_end - c_begin;
    }
  }

  void Copy(const T* src, int64_t stride, float* dst, int64_t count) const {
    if constexpr (std::is_same_v<T, float>) {
      // Plain loops (runs are a few dozen pixels: no library call per run); stride 2 gets its own
      // loop so that the compiler vectorises it with shuffles.
      if (stride == 1) {
        for (int64_t t = 0; t < count; ++t) dst[t] = src[t];
        return;
      }
      if (stride == 2) {
        for (int64_t t = 0; t < count; ++t) dst[t] = src[2 * t];
        return;
      }
    } else if constexpr (std::is_same_v<T, Ort::Float16_t>) {
      if (stride == 1) {
        kernels.half_to_float(reinterpret_cast<const uint16_t*>(src), dst, count);
        return;
      }
    }
    for (int64_t t = 0; t < count; ++t) dst[t] = ToFloat(src[t * stride]);
  }

  static void Zero(float* dst, int64_t count) {
    for (int64_t t = 0; t < count; ++t) dst[t] = 0.0f;
  }
};

}  // namespace

template <typename T>
bool FastConv(OrtKernelContext* context, const FastKernelSet& kernels, const PackedWeight& w,
              const ConvAttributes& attrs, const ConvGeometry& geo, const T* x, const float* bias, T* y,
              const Activation* act) {
  if (act != nullptr && act->none()) act = nullptr;
  constexpr bool kFloat = std::is_same_v<T, float>;
  const int64_t pixels = geo.out_height * geo.out_width;
  const int64_t plane = geo.height * geo.width;
  const int64_t groups = attrs.group;
  const int64_t ocg = geo.out_channels_per_group;
  const int64_t pixel_tiles = (pixels + kTilePixels - 1) / kTilePixels;
  const int64_t base_items = geo.batch * groups * pixel_tiles;
  if (base_items == 0 || ocg == 0) return true;  // an empty output (N = 0, OH or OW = 0): nothing to do
  int64_t n_chunks = std::max<int64_t>(1, (kWantedItems + base_items - 1) / base_items);
  n_chunks = std::min(n_chunks, std::max<int64_t>(1, ocg / 16));
  const int64_t chunk_n = (ocg + n_chunks - 1) / n_chunks;
  Im2col<T> im2col{attrs, geo, kernels};
  im2col.contiguous = attrs.kernel_shape[0] == 1 && attrs.kernel_shape[1] == 1 && attrs.strides[0] == 1 &&
                      attrs.strides[1] == 1 && geo.pad_top == 0 && geo.pad_left == 0 &&
                      geo.out_height == geo.height && geo.out_width == geo.width;

  // With few (image, group, tile) items the features are split too, and the items of a tile would
  // each build the same panel: then the panels of all K are built once, first, and shared.
  const bool shared = n_chunks > 1;
  const int64_t strips_per_tile = (std::min(kTilePixels, pixels) + kStripCols - 1) / kStripCols;
  const int64_t shared_stride = w.k * kStripCols;  // a shared panel's strip: all K rows
  float* shared_panels = nullptr;
  if (shared) {
    shared_panels = ThreadScratch(kScratchPanel, base_items * strips_per_tile * shared_stride);
    constexpr int64_t kParts = 4;  // row ranges per panel, to spread a single tile over the threads
    auto fill = [&](int64_t index) {
      const int64_t base = index / kParts, part = index % kParts;
      const int64_t tile = base % pixel_tiles, batch = base / pixel_tiles;
      const int64_t image = batch / groups, g = batch % groups;
      const int64_t p0 = tile * kTilePixels, pc = std::min(kTilePixels, pixels - p0);
      const int64_t k_begin = w.k * part / kParts, k_end = w.k * (part + 1) / kParts;
      std::vector<PixelRun> runs;
      im2col.Runs(p0, pc, runs);
      float* panel = shared_panels + base * strips_per_tile * shared_stride + k_begin * kStripCols;
      im2col.Fill(x + (image * geo.channels + g * geo.channels_per_group) * plane, k_begin, k_end, runs, panel,
                  shared_stride);
    };
    if (!ParallelItems(context, base_items * kParts, fill)) return false;
  }

  auto item = [&](int64_t index) {
    const int64_t nc = index % n_chunks;
    const int64_t base = index / n_chunks;
    const int64_t tile = base % pixel_tiles;
    const int64_t batch = base / pixel_tiles;
    const int64_t image = batch / groups, g = batch % groups;
    const int64_t p0 = tile * kTilePixels;
    const int64_t pc = std::min(kTilePixels, pixels - p0);
    const int64_t n_begin = g * ocg + nc * chunk_n;
    const int64_t n_end = std::min((g + 1) * ocg, n_begin + chunk_n);
    if (n_begin >= n_end) return;
    const T* x_group = x + (image * geo.channels + g * geo.channels_per_group) * plane;

    constexpr int64_t kStripStride = 4 * kBlockGroups * kStripCols;
    float* panel = shared ? nullptr : ThreadScratch(kScratchTile, kStripStride * ((pc + kStripCols - 1) / kStripCols));
    float* scratch = kFloat ? nullptr : ThreadScratch(kScratchOut, (n_end - n_begin) * pc);
    std::vector<PixelRun> runs;
    if (!shared) im2col.Runs(p0, pc, runs);
    ColsTask task;
    task.cols = pc;
    task.n_begin = n_begin;
    task.n_end = n_end;
    if constexpr (kFloat) {
      task.c = y + (image * geo.out_channels + n_begin) * pixels + p0;
      task.ldc = pixels;
    } else {
      task.c = scratch;
      task.ldc = pc;
    }
    task.kb.bias = bias;
    const int64_t block_groups = BalancedBlock(w.groups, kBlockGroups);
    for (int64_t gk = 0; gk < w.groups; gk += block_groups) {
      task.kb.g_begin = gk;
      task.kb.g_end = std::min(w.groups, gk + block_groups);
      task.kb.accumulate = gk > 0;
      task.kb.final = task.kb.g_end == w.groups;
      if (shared) {
        task.p = shared_panels + base * strips_per_tile * shared_stride + 4 * gk * kStripCols;
        task.strip_stride = shared_stride;
      } else {
        im2col.Fill(x_group, 4 * task.kb.g_begin, 4 * task.kb.g_end, runs, panel, kStripStride);
        task.p = panel;
        task.strip_stride = kStripStride;
      }
      kernels.cols(w, task);
    }
    ActivateRows(act, task.c, n_end - n_begin, pc, task.ldc);
    if constexpr (!kFloat) {
      for (int64_t n = n_begin; n < n_end; ++n) {
        const float* src = scratch + (n - n_begin) * pc;
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
                              const ConvGeometry&, const float*, const float*, float*,
                              const Activation*);
template bool FastConv<Ort::Float16_t>(OrtKernelContext*, const FastKernelSet&, const PackedWeight&,
                                       const ConvAttributes&, const ConvGeometry&, const Ort::Float16_t*, const float*,
                                       Ort::Float16_t*, const Activation*);
template bool FastConv<Ort::BFloat16_t>(OrtKernelContext*, const FastKernelSet&, const PackedWeight&,
                                        const ConvAttributes&, const ConvGeometry&, const Ort::BFloat16_t*,
                                        const float*, Ort::BFloat16_t*, const Activation*);

}  // namespace onnxsparse::cpu
