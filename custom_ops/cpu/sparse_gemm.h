// SparseGemm: the generic product, Y = alpha * A @ W + bias, with W given in SPEC's compressed 2:4
// form (values [N, K/2], index [N, ceil(K/8)]) and read as is: no dense copy. It runs when the
// compressed pair is fed at run time (an unfolded CompressOp) or is invalid; a constant weight is
// re-laid out once at kernel creation and runs the fast kernels instead (fast_kernels.h).
//
// Work is cut into tiles of kTileM rows of A by a block of rows of W (output features). A tile of
// A is first packed into a fp32 *panel* laid out [K][kTileM] (the caller's Pack: a plain copy for
// MatMul, im2col for Conv), so that one decoded nibble selects two panel rows, each kTileM wide,
// and two weight values multiply-accumulate into kTileM accumulators: every nibble and value is
// decoded once per tile and reused across kTileM rows of A. SparseGemmTile is the inner kernel,
// portable C++ that the compiler vectorises (the ISA-specific kernels work on the packed layout).
//
// Tiles run on ONNX Runtime's intra-op thread pool (KernelContext::ParallelFor). Each task packs
// into its own panel, allocated once per task (K * kTileM floats), never weight-sized.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <vector>

#include "common/activation.h"
#include "common/ort_api.h"
#include "common/status.h"

namespace onnxsparse::cpu {

constexpr int64_t kTileM = 16;

// Panel rows past K, kept zero: an invalid index field (3) points at most one row past its group,
// so a corrupt index reads zeros there, is detected, and never reads outside the panel.
constexpr int64_t kPanelPadRows = 4;
inline int64_t PanelFloats(int64_t k) { return (k + kPanelPadRows) * kTileM; }

// Where one batch of the product reads its weight and writes its output.
template <typename T>
struct GemmTarget {
  const T* values = nullptr;        // row 0 of this batch's weight, [N, K/2]
  const uint8_t* index = nullptr;   // row 0 of this batch's index, [N, ceil(K/8)]
  const T* bias = nullptr;          // [N] or null
  T* out = nullptr;                 // Y[m, n] at out[m * out_stride_m + n * out_stride_n]
  int64_t out_stride_m = 0;
  int64_t out_stride_n = 0;
  Activation act;                   // the fused activation, applied to alpha * product + bias
};

// For the mc (<= kTileM) rows of A packed in panel starting at row m0 of the batch, and the output
// features n in [n_begin, n_end): Y[m0 + i, n] = act(alpha * sum_k panel[k][i] * W[k, n] + bias[n]).
// Returns false when an index nibble of those rows holds the invalid field value 3.
template <typename T>
bool SparseGemmTile(const float* panel, int64_t mc, int64_t k, int64_t m0, const GemmTarget<T>& target,
                    float alpha, int64_t n_begin, int64_t n_end);

// Problem: the shape and the two callbacks of one (possibly batched) product.
//   int64_t batches, m, n, k;
//   void Pack(int64_t batch, int64_t m0, int64_t mc, float* panel) const;
//     fills panel[kk * kTileM + i] = A_batch[m0 + i, kk] for kk < k, i < mc, and 0 for i >= mc;
//   GemmTarget<T> Target(int64_t batch) const;
template <typename T, typename Problem>
Ort::Status SparseGemm(OrtKernelContext* context, const char* op, const Problem& problem, float alpha);

// ---------------------------------------------------------------------------------------------

namespace detail {

// Below this many tiles of A the rows of W are split into blocks too, so that small-M products
// (a single token, a tiny image) still spread over the threads.
constexpr int64_t kMinWorkItems = 64;
// Each task of ParallelFor takes a contiguous run of work items and packs into one panel.
constexpr int64_t kMaxTasks = 256;
// A block of W's rows is at least this many, so that packing stays small next to the product.
constexpr int64_t kMinRowsPerBlock = 16;

template <typename T, typename Problem>
struct GemmRun {
  const Problem* problem;
  float alpha;
  int64_t tiles_m;     // tiles of A per batch
  int64_t blocks_n;    // blocks of W's rows per tile
  int64_t rows_per_block;
  int64_t items;
  int64_t tasks;
  std::atomic<bool> bad_index{false};
  std::atomic<bool> failed{false};

  void RunTask(int64_t task) {
    const int64_t begin = items * task / tasks;
    const int64_t end = items * (task + 1) / tasks;
    const Problem& p = *problem;
    std::vector<float> panel(static_cast<size_t>(PanelFloats(p.k)), 0.0f);
    int64_t packed_tile = -1;
    GemmTarget<T> target;
    int64_t target_batch = -1;
    bool ok = true;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t tile = item / blocks_n;  // (batch, tile of A), packed once per run of blocks
      const int64_t block = item % blocks_n;
      const int64_t batch = tile / tiles_m;
      const int64_t m0 = (tile % tiles_m) * kTileM;
      const int64_t mc = std::min(kTileM, p.m - m0);
      if (tile != packed_tile) {
        p.Pack(batch, m0, mc, panel.data());
        packed_tile = tile;
      }
      if (batch != target_batch) {
        target = p.Target(batch);
        target_batch = batch;
      }
      const int64_t n_begin = block * rows_per_block;
      const int64_t n_end = std::min(p.n, n_begin + rows_per_block);
      ok &= SparseGemmTile<T>(panel.data(), mc, p.k, m0, target, alpha, n_begin, n_end);
    }
    if (!ok) bad_index.store(true, std::memory_order_relaxed);
  }

  static void Task(void* self, size_t task) {
    auto* run = static_cast<GemmRun*>(self);
    try {
      run->RunTask(static_cast<int64_t>(task));
    } catch (...) {  // nothing may escape into ONNX Runtime's thread pool
      run->failed.store(true, std::memory_order_relaxed);
    }
  }
};

}  // namespace detail

template <typename T, typename Problem>
Ort::Status SparseGemm(OrtKernelContext* context, const char* op, const Problem& problem, float alpha) {
  if (problem.batches <= 0 || problem.m <= 0 || problem.n <= 0) return Ort::Status{nullptr};
  detail::GemmRun<T, Problem> run;
  run.problem = &problem;
  run.alpha = alpha;
  run.tiles_m = (problem.m + kTileM - 1) / kTileM;
  const int64_t tiles = problem.batches * run.tiles_m;
  int64_t blocks = 1;
  if (tiles < detail::kMinWorkItems) {
    const int64_t wanted = (detail::kMinWorkItems + tiles - 1) / tiles;
    const int64_t most = std::max<int64_t>(1, problem.n / detail::kMinRowsPerBlock);
    blocks = std::min(wanted, most);
  }
  run.rows_per_block = (problem.n + blocks - 1) / blocks;
  run.blocks_n = (problem.n + run.rows_per_block - 1) / run.rows_per_block;
  run.items = tiles * run.blocks_n;
  run.tasks = std::min(run.items, detail::kMaxTasks);

  if (run.tasks == 1) {
    detail::GemmRun<T, Problem>::Task(&run, 0);
  } else {
    Ort::KernelContext(context).ParallelFor(&detail::GemmRun<T, Problem>::Task, static_cast<size_t>(run.tasks), 0,
                                            &run);
  }
  if (run.failed.load()) return RuntimeError(op, "the product failed (out of memory?)");
  if (run.bad_index.load()) return InvalidArgument(op, "index holds the invalid 2-bit value 3");
  return Ort::Status{nullptr};
}

}  // namespace onnxsparse::cpu
