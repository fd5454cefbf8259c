// Blocking of the fast MatMul (see fast_kernels.h for the register tiles):
// - work items are (chunk of output features) x (chunk of rows of A), feature-chunk major, so
//   that a chunk's weights (kChunkN features) are read from memory once per chunk of rows and
//   stay in L2 across its row tiles;
// - inside an item, K is cut into blocks of kBlockGroups groups, so that a register tile's rows
//   of A (8 rows x 512 fp32 = 16 KiB) stay in L1 while the tile walks the chunk's features.
// Every output element is computed by one item in the same order whatever the thread count, so
// results do not depend on intra_op_num_threads.
#include "cpu/fast_matmul.h"

#include <algorithm>

#include "cpu/parallel.h"

namespace onnxsparse::cpu {

namespace {

constexpr int64_t kBlockGroups = 128;  // groups of K per cache block (K = 512)
constexpr int64_t kMaxChunkN = 256;    // output features per item
constexpr int64_t kChunkM = 128;       // rows of A per item
constexpr int64_t kWantedItems = 8;    // enough items to spread a single row over the threads

}  // namespace

bool FastMatMul(OrtKernelContext* context, const FastKernelSet& kernels, const PackedWeight& w, const float* a,
                int64_t m, float* c, const float* bias, float alpha) {
  const int64_t m_chunks = (m + kChunkM - 1) / kChunkM;
  // Feature chunks: whole 32-feature pairs of blocks, small enough to give every thread work.
  int64_t chunk_n = (w.rows + kWantedItems - 1) / kWantedItems;
  chunk_n = std::clamp<int64_t>((chunk_n + 31) / 32 * 32, 32, kMaxChunkN);
  const int64_t chunk_blocks = chunk_n / kBlockN;
  const int64_t n_chunks = (w.blocks + chunk_blocks - 1) / chunk_blocks;

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
    for (int64_t g = 0; g < w.groups; g += kBlockGroups) {
      task.kb.g_begin = g;
      task.kb.g_end = std::min(w.groups, g + kBlockGroups);
      task.kb.accumulate = g > 0;
      task.kb.final = task.kb.g_end == w.groups;
      kernels.rows(w, task);
    }
  };
  return ParallelItems(context, n_chunks * m_chunks, item);
}

}  // namespace onnxsparse::cpu
