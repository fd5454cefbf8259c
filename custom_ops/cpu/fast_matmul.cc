// Blocking of the fast MatMul (see fast_kernels.h for the register tiles):
// - work items are (chunk of output features) x (chunk of rows of A), feature-chunk major, so
//   that a chunk's weights (kChunkN features) are read from memory once per chunk of rows and
//   stay in L2 across its row tiles;
// - inside an item, K is cut into blocks of kBlockGroups groups, so that the chunk's weights for
//   a block (256 features x 1024 K: 590 KiB) stay in L2 across the item's row tiles; a single
//   row tile (M <= 8) streams its weights once, in one run over K.
// Where the product is compute-bound (ColsStripWidth: 14-16, 28-32 and >= 48 rows of A) it runs on
// the Cols kernel instead (no permutes; see fast_kernels.h): A is first packed, transposed, into
// aligned strips of 16, 32 or 64 rows (in parallel), each item computes C^T for its rows and
// features and transposes it into C.
// Every output element is computed by one item in the same order whatever the thread count, so
// results do not depend on intra_op_num_threads.
#include "cpu/fast_matmul.h"

#include <algorithm>

#include "cpu/aligned_buffer.h"
#include "cpu/epilogue.h"
#include "cpu/parallel.h"

namespace onnxsparse::cpu {

namespace {

constexpr int64_t kBlockGroups = 256;  // groups of K per cache block (K = 1024) when A has several row tiles
constexpr int64_t kMaxChunkN = 256;    // output features per item
constexpr int64_t kChunkM = 128;       // rows of A per item
constexpr int64_t kWantedItems = 8;    // enough items to spread a single row over the threads

constexpr int64_t kColsMinRows = 48;
constexpr int64_t kColsBlockGroups = 32;     // a 64-wide strip's K block: 128 x 64 fp32 = 32 KiB, in L1
constexpr int64_t kNarrowBlockBytes = 65536;  // a narrow strip's K block: 256 groups x 16 or 128 x 32 (L2)
constexpr int64_t kColsTileRows = 256;    // rows of A per item (4 strips)

int64_t FeatureChunk(int64_t rows, int64_t items_per_chunk) {
  const int64_t wanted = std::max<int64_t>(1, kWantedItems / items_per_chunk);
  const int64_t chunk = (rows + wanted - 1) / wanted;
  return std::clamp<int64_t>((chunk + 31) / 32 * 32, 32, kMaxChunkN);
}

// The Cols strip width for m rows of A, or 0 for the Rows kernel. Narrow strips (cols_narrow)
// where they are nearly full: 14-16 rows in one strip of 16, 28-32 in one of 32, and from 48 rows
// on strips of 32 (their 8 x 2 register tile beats the 64-wide 4 x 4 one: M=64 and 256, K=N=4096,
// 1.41-1.44x vs 1.29-1.36x dense). Below 48 rows otherwise the Rows kernel wins (a strip of 16
// with 12 rows, or of 32 with 20-24, wastes a quarter or more of the lanes: measured slower).
// Kernel sets marked rows_only (AVX2) run Rows at every m.
int64_t ColsStripWidth(const FastKernelSet& kernels, int64_t m) {
  if (kernels.rows_only) return 0;
  if (kernels.cols_narrow == nullptr) return m >= kColsMinRows ? kStripCols : 0;
  if (m >= kColsMinRows || (m >= 28 && m <= 32)) return 32;
  if (m >= 14 && m <= 16) return 16;
  return 0;
}

// strip_cols: the panel's strip width W, 64 (kernels.cols) or 16 / 32 (kernels.cols_narrow).
bool ColsMatMul(OrtKernelContext* context, const FastKernelSet& kernels, const PackedWeight& w, const float* a,
                int64_t m, float* c, const float* bias, float alpha, int64_t strip_cols, const Activation* act) {
  const int64_t k = w.k, n = w.rows;
  const int64_t sw = strip_cols;
  const bool narrow = sw != kStripCols;
  const int64_t strips = (m + sw - 1) / sw;
  const int64_t strip_stride = k * sw;
  float* panel = ThreadScratch(kScratchPanel, strips * strip_stride);
  // panel[s][kk][j] = A[W s + j, kk] (zero past the last row).
  auto pack = [&](int64_t s) {
    float* dst = panel + s * strip_stride;
    const int64_t rows = std::min(sw, m - s * sw);
    const float* src = a + s * sw * k;
    constexpr int64_t kCols = 16;
    for (int64_t k0 = 0; k0 < k; k0 += kCols) {
      const int64_t kc = std::min(kCols, k - k0);
      for (int64_t j = 0; j < sw; ++j) {
        for (int64_t kk = 0; kk < kc; ++kk) dst[(k0 + kk) * sw + j] = j < rows ? src[j * k + k0 + kk] : 0.0f;
      }
    }
  };
  if (!ParallelItems(context, strips, pack)) return false;

  const int64_t m_tiles = (m + kColsTileRows - 1) / kColsTileRows;
  const int64_t chunk_n = FeatureChunk(n, m_tiles);
  const int64_t n_chunks = (n + chunk_n - 1) / chunk_n;
  auto item = [&](int64_t index) {
    const int64_t nc = index / m_tiles, mt = index % m_tiles;
    const int64_t m0 = mt * kColsTileRows, rows = std::min(kColsTileRows, m - m0);
    const int64_t n0 = nc * chunk_n, n1 = std::min(n, n0 + chunk_n);
    float* ct = ThreadScratch(kScratchTile, (n1 - n0) * rows);  // C^T of the item
    ColsTask task;
    task.strip_stride = strip_stride;
    task.strip_cols = sw;
    task.cols = rows;
    task.n_begin = n0;
    task.n_end = n1;
    task.c = ct;
    task.ldc = rows;
    task.kb.alpha = alpha;
    task.kb.bias = bias;
    // K blocks: a 64-wide strip's panel block stays in L1; narrow strips take longer blocks (64 KiB
    // of panel, from L2): each tile then walks a longer run of its weight stream (K=N=4096, M=16:
    // 128 groups 5.3 ms, 256 groups 5.1 ms).
    const int64_t block_groups =
        BalancedBlock(w.groups, narrow ? kNarrowBlockBytes / (4 * sw * static_cast<int64_t>(sizeof(float)))
                                       : kColsBlockGroups);
    for (int64_t g = 0; g < w.groups; g += block_groups) {
      task.kb.g_begin = g;
      task.kb.g_end = std::min(w.groups, g + block_groups);
      task.kb.accumulate = g > 0;
      task.kb.final = task.kb.g_end == w.groups;
      task.p = panel + (m0 / sw) * strip_stride + 4 * g * sw;
      if (sw == kStripCols) {
        kernels.cols(w, task);
      } else {
        kernels.cols_narrow(w, task);
      }
    }
    ActivateRows(act, ct, n1 - n0, rows, rows);
    constexpr int64_t kTile = 16;  // transpose C^T into C in 16 x 16 tiles
    for (int64_t i0 = 0; i0 < rows; i0 += kTile) {
      for (int64_t j0 = n0; j0 < n1; j0 += kTile) {
        const int64_t i1 = std::min(rows, i0 + kTile), j1 = std::min(n1, j0 + kTile);
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t j = j0; j < j1; ++j) c[(m0 + i) * n + j] = ct[(j - n0) * rows + i];
      }
    }
  };
  return ParallelItems(context, n_chunks * m_tiles, item);
}

}  // namespace

bool FastMatMul(OrtKernelContext* context, const FastKernelSet& kernels, const PackedWeight& w, const float* a,
                int64_t m, float* c, const float* bias, float alpha, const Activation* act) {
  if (act != nullptr && act->none()) act = nullptr;
  const int64_t strip_cols = ColsStripWidth(kernels, m);
  if (strip_cols > 0) return ColsMatMul(context, kernels, w, a, m, c, bias, alpha, strip_cols, act);
  const int64_t m_chunks = (m + kChunkM - 1) / kChunkM;
  // Feature chunks: whole 32-feature pairs of blocks, small enough to give every thread work.
  int64_t chunk_n = (w.rows + kWantedItems - 1) / kWantedItems;
  chunk_n = std::clamp<int64_t>((chunk_n + 31) / 32 * 32, 32, kMaxChunkN);
  const int64_t chunk_blocks = chunk_n / kBlockN;
  const int64_t n_chunks = (w.blocks + chunk_blocks - 1) / chunk_blocks;

  // A single row tile reuses nothing across tiles: its weights stream once, in one run over K.
  const int64_t block_groups = m <= 8 ? w.groups : BalancedBlock(w.groups, kBlockGroups);
  auto item = [&](int64_t index) {
    const int64_t nc = index / m_chunks;
    const int64_t mc = index % m_chunks;
    RowsTask task;
    task.lda = w.k;
    task.ldc = w.rows;
    task.a = a + mc * kChunkM * w.k;
    task.c = c + mc * kChunkM * w.rows;
    task.m = std::min(kChunkM, m - mc * kChunkM);
    task.block_begin = nc * chunk_blocks;
    task.block_end = std::min(w.blocks, task.block_begin + chunk_blocks);
    task.kb.alpha = alpha;
    task.kb.bias = bias;
    for (int64_t g = 0; g < w.groups; g += block_groups) {
      task.kb.g_begin = g;
      task.kb.g_end = std::min(w.groups, g + block_groups);
      task.kb.accumulate = g > 0;
      task.kb.final = task.kb.g_end == w.groups;
      kernels.rows(w, task);
    }
    if (act != nullptr) {
      const int64_t n0 = task.block_begin * kBlockN, n1 = std::min(w.rows, task.block_end * kBlockN);
      ActivateRows(act, task.c + n0, task.m, n1 - n0, task.ldc);
    }
  };
  return ParallelItems(context, n_chunks * m_chunks, item);
}

}  // namespace onnxsparse::cpu
