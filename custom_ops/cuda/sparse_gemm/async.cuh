// The cp.async ring kernels (GemmVariant::kAsyncRing: SPEC's form decoded from shared memory, and
// kAsyncRingPacked: the packed weight on the sparse tensor cores), fp16 and bf16, K % 128 == 0.
// Instantiated per element type and weight form in async_{decode,packed}_{fp16,bf16}.cu.
//
// Launched as programmatic dependents (PDL) where the GPU has them (sm_90 and newer); compiled for
// an older GPU the griddepcontrol instructions are left out and the launch is an ordinary one.
#pragma once
#include <algorithm>
#include <atomic>

#include "cuda/dependent_launch.h"
#include "cuda/sparse_gemm/launchers.h"
#include "cuda/sparse_gemm/mma_common.cuh"

namespace onnxsparse::cuda::detail {

// Waits for the grid this one depends on (PDL); returns at once without PDL. Not before sm_90.
__device__ __forceinline__ void GridDependencyWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
// Lets a dependent grid start its prologue. Not before sm_90.
__device__ __forceinline__ void GridDependencyLaunchDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// v5: the same MMA mapping as v4 (remapped groups), fed by a cp.async ring per warp instead of
// registers, so that a warp keeps kStages chunks of its 16 weight rows in flight (v3/v4: two, held
// in registers) and every global load is a whole 16-byte piece of a 128-byte line. A warp copies
// and reads only its own ring, so __syncwarp orders it; no block barrier until the reduction.
// Needs K % 128 == 0 and 16-byte aligned values, index and activations.
// Per warp and stage (bytes): weight 16 rows x 128, index 16 x 16, activations x_rows x 256, the
// 16-byte pieces of a row XOR-swizzled so that the fragment reads are free of bank conflicts.
__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}
__device__ __forceinline__ uint4 LoadShared16(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(addr));
  return v;
}

// x_rows: activation rows a stage holds (min(M, 8 * kMTiles), the same for every block).
template <typename T, int kMTiles, int kStages, bool kPacked>
__global__ void __launch_bounds__(kGemmWarps * 32, kMTiles <= 2 ? 2 : 1) SparseGemmAsyncKernel(SparseGemmArgs p, int x_rows) {
  extern __shared__ __align__(16) unsigned char ring[];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * (8 * kMTiles);
  const int valid_x = static_cast<int>(p.m - m0 < x_rows ? p.m - m0 : x_rows);
  const int64_t half_k = p.k / 2;
  const int64_t index_stride = p.k / 8;
  const int64_t nchunks = p.k / 128;
  const int stage_bytes = AsyncStageBytes(x_rows);
  const uint32_t my_ring = static_cast<uint32_t>(__cvta_generic_to_shared(ring)) + warp * kStages * stage_bytes;
  // 16 zero bytes after the rings: what ldmatrix reads for activation rows past M; then the
  // warps' partial sums of a tile (ReduceAndStore), apart from the rings, which by then already
  // hold the next tile's chunks.
  const uint32_t zero_piece = static_cast<uint32_t>(__cvta_generic_to_shared(ring)) + kGemmWarps * kStages * stage_bytes;
  float* partial = reinterpret_cast<float*>(ring + kGemmWarps * kStages * stage_bytes + 16);
  if constexpr (kPacked) {
    if (threadIdx.x < 4) reinterpret_cast<uint32_t*>(ring + kGemmWarps * kStages * stage_bytes)[threadIdx.x] = 0u;
    __syncthreads();
  }
  // The block's tiles of 16 weight rows: blockIdx.x, + gridDim.x, ... (one, unless the launch made
  // the grid smaller than the tiles: then each block streams several, and a warp's ring runs on
  // from one tile's chunks into the next's without draining). Warp w takes chunks w, w + 8, ... of
  // each: `per_tile` of them; its items q = 0, 1, ... run through its chunks of tile after tile.
  const int64_t row_tiles = (p.n + 15) / 16;
  const int64_t my_tiles = blockIdx.x < row_tiles ? (row_tiles - 1 - blockIdx.x) / gridDim.x + 1 : 0;
  const int64_t per_tile = nchunks > warp ? (nchunks - 1 - warp) / kGemmWarps + 1 : 0;
  const int64_t items = per_tile * my_tiles;
  auto tile_of = [&](int64_t q) { return blockIdx.x + (q / per_tile) * gridDim.x; };
  auto chunk_of = [&](int64_t q) { return warp + (q % per_tile) * kGemmWarps; };
  const uint16_t* values = static_cast<const uint16_t*>(p.values);
  const uint16_t* x = static_cast<const uint16_t*>(p.x);

  // Copies the weight (values and index) of item q into stage st; nothing when q is past the end.
  // From the packed form a stage is one contiguous tile, already in the ring's order.
  auto issue_weight = [&](int64_t q, int st) {
    if (q >= items) return;
    const int64_t b = tile_of(q);
    const int64_t c = chunk_of(q);
    const int64_t r0 = b * 16;
    const uint32_t base = my_ring + st * stage_bytes;
    if constexpr (kPacked) {
      const unsigned char* tile = static_cast<const unsigned char*>(p.packed) + (b * nchunks + c) * kPackedTileBytes;
#pragma unroll
      for (int j = 0; j < (kPackedTileBytes / 16 + 31) / 32; ++j) {
        const int i = lane + 32 * j;
        if (i < kPackedTileBytes / 16) CpAsync16(base + i * 16, tile + i * 16, true);
      }
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int i = lane + 32 * j;
        const int r = i >> 3;
        const int piece = i & 7;
        const bool ok = r0 + r < p.n;
        const uint16_t* src = ok ? values + (r0 + r) * half_k + c * 64 + piece * 8 : values;
        CpAsync16(base + r * kAsyncWRowBytes + ((piece ^ ((r & 1) << 2)) << 4), src, ok);
      }
      if (lane < 16) {
        const bool ok = r0 + lane < p.n;
        const uint8_t* src = ok ? p.index + (r0 + lane) * index_stride + c * 16 : p.index;
        CpAsync16(base + kAsyncWBytes + lane * 16, src, ok);
      }
    }
  };
  // Copies the activations of item q's chunk into stage st.
  auto issue_x = [&](int64_t q, int st) {
    if (q >= items) return;
    const int64_t c = chunk_of(q);
    const uint32_t xbase = my_ring + st * stage_bytes + kAsyncWBytes + kAsyncIndexBytes;
    for (int i = lane; i < valid_x * 16; i += 32) {
      const int r = i >> 4;
      const int piece = i & 15;
      // Swizzle: ldmatrix (packed) reads one piece of 8 consecutive rows at a time, the decoding
      // path two pieces of 2 rows.
      const int phys = kPacked ? piece ^ (r & 7) : piece ^ (r & 1);
      CpAsync16(xbase + r * kAsyncXRowBytes + (phys << 4), x + (m0 + r) * p.k + c * 128 + piece * 8, true);
    }
  };

  float acc[kMTiles][4];

  // Packed: per MMA j (32 K of the chunk), lane (g, t) holds A registers (row g, group 8j + t),
  // (g + 8, 8j + t), (g, 8j + t + 4), (g + 8, 8j + t + 4) as one 16-byte piece, and lanes t = 0, 1
  // the metadata of groups 8j + 4t .. 8j + 4t + 3 of rows g (low 16 bits) and g + 8 (high).
  auto compute_packed = [&](int st) {
    const uint32_t base = my_ring + st * stage_bytes;
    const uint4 meta = LoadShared16(base + kAsyncWBytes + ((g * 2 + (t & 1)) << 4));
    const uint32_t metas[4] = {meta.x, meta.y, meta.z, meta.w};
    const uint32_t xbase = base + kAsyncWBytes + kAsyncIndexBytes;
    const int xr = lane & 7;   // the activation row this lane addresses, within a tile
    const int piece = lane >> 3;  // and which 8 K of the MMA's 32
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint4 a = LoadShared16(base + ((j * 32 + lane) << 4));
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        const int r = mt * 8 + xr;
        const uint32_t addr =
            r < valid_x ? xbase + r * kAsyncXRowBytes + (((4 * j + piece) ^ (r & 7)) << 4) : zero_piece;
        uint32_t b[4];
        LoadMatrixX4(addr, b);
        MmaSp<T>::Run(acc[mt], a, b, metas[j]);
      }
    }
  };
  auto compute_decoded = [&](int st) {
    const uint32_t base = my_ring + st * stage_bytes;
    const int swz = (g & 1) << 2;  // rows g and g + 8 have the same parity
    const uint4 wa0 = LoadShared16(base + g * kAsyncWRowBytes + ((t ^ swz) << 4));
    const uint4 wa1 = LoadShared16(base + g * kAsyncWRowBytes + (((4 + t) ^ swz) << 4));
    const uint4 wb0 = LoadShared16(base + (g + 8) * kAsyncWRowBytes + ((t ^ swz) << 4));
    const uint4 wb1 = LoadShared16(base + (g + 8) * kAsyncWRowBytes + (((4 + t) ^ swz) << 4));
    const uint4 ia = LoadShared16(base + kAsyncWBytes + g * 16);
    const uint4 ib = LoadShared16(base + kAsyncWBytes + (g + 8) * 16);
    // Nibbles of groups 4t..4t+3 (16-bit word t of the row's index) and 16+4t.. (word 4+t).
    const int shift = (t & 1) * 16;
    const uint32_t na = (((t >> 1) ? ia.y : ia.x) >> shift & 0xFFFFu) | ((((t >> 1) ? ia.w : ia.z) >> shift) << 16);
    const uint32_t nb = (((t >> 1) ? ib.y : ib.x) >> shift & 0xFFFFu) | ((((t >> 1) ? ib.w : ib.z) >> shift) << 16);
    const uint32_t pa[8] = {wa0.x, wa0.y, wa0.z, wa0.w, wa1.x, wa1.y, wa1.z, wa1.w};
    const uint32_t pb[8] = {wb0.x, wb0.y, wb0.z, wb0.w, wb1.x, wb1.y, wb1.z, wb1.w};
    uint32_t xf[kMTiles][16];
    const uint32_t xbase = base + kAsyncWBytes + kAsyncIndexBytes;
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
      const int r = mt * 8 + g;
      if (r < valid_x) {
        const int sx = r & 1;
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const uint4 lo = LoadShared16(xbase + r * kAsyncXRowBytes + (((2 * t + q) ^ sx) << 4));
          const uint4 hi = LoadShared16(xbase + r * kAsyncXRowBytes + (((8 + 2 * t + q) ^ sx) << 4));
          xf[mt][4 * q + 0] = lo.x, xf[mt][4 * q + 1] = lo.y, xf[mt][4 * q + 2] = lo.z, xf[mt][4 * q + 3] = lo.w;
          xf[mt][8 + 4 * q + 0] = hi.x, xf[mt][8 + 4 * q + 1] = hi.y, xf[mt][8 + 4 * q + 2] = hi.z;
          xf[mt][8 + 4 * q + 3] = hi.w;
        }
      } else {
#pragma unroll
        for (int e = 0; e < 16; ++e) xf[mt][e] = 0;
      }
    }
#pragma unroll
    for (int s = 0; s < 8; ++s) {
      uint32_t a0, a1, a2, a3;
      DecodeGroup<T>(pa[s], (na >> (4 * s)) & 0xFu, a0, a2);
      DecodeGroup<T>(pb[s], (nb >> (4 * s)) & 0xFu, a1, a3);
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) Mma<T>::Run(acc[mt], a0, a1, a2, a3, xf[mt][2 * s], xf[mt][2 * s + 1]);
    }
  };

  // A block reads 8 consecutive chunks of a tile's rows at a time (one per warp).
  // Launched as a programmatic dependent (PDL), a constant weight is fetched before the wait for
  // the previous kernel, whose output may be X; the first commit group then holds the weight of
  // every prologue stage. Without PDL the wait returns at once.
  if (p.weight_constant) {
#pragma unroll
    for (int st = 0; st < kStages - 1; ++st) issue_weight(st, st);
  }
  GridDependencyWait();
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (!p.weight_constant) issue_weight(st, st);
    issue_x(st, st);
    CpAsyncCommit();
  }
  int st = 0;
  int64_t q = 0;
#pragma unroll 1
  for (int64_t i = 0; i < my_tiles; ++i) {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) acc[mt][0] = acc[mt][1] = acc[mt][2] = acc[mt][3] = 0.f;
#pragma unroll 1
    for (int64_t j = 0; j < per_tile; ++j, ++q) {
      CpAsyncWait<kStages - 2>();
      __syncwarp();  // item q has landed for every lane, and every lane is done with the stage reused next
      const int next = st == 0 ? kStages - 1 : st - 1;
      issue_weight(q + kStages - 1, next);
      issue_x(q + kStages - 1, next);
      CpAsyncCommit();
      if constexpr (kPacked) compute_packed(st);
      else compute_decoded(st);
      st = st + 1 == kStages ? 0 : st + 1;
    }
    // The next kernel, when launched as a programmatic dependent, may start its prologue now (its
    // own wait still waits for this grid to finish).
    if (i + 1 == my_tiles) GridDependencyLaunchDependents();
    __syncthreads();  // every warp has read the previous tile's partial sums
    ReduceAndStore<T, kMTiles>(partial, acc, p, (blockIdx.x + i * gridDim.x) * 16, m0);
  }
  CpAsyncWait<0>();
}

// Shared memory of one v5 block with kStages stages; the stage count for a given M is the largest
// that keeps a block within kAsyncBlockBudget, so that two blocks share an SM where they fit.
constexpr int kAsyncBlockBudget = 100 * 1024;
constexpr int kAsyncMaxStages = 6;
inline int AsyncRingBytes(int x_rows, int stages) { return kGemmWarps * stages * AsyncStageBytes(x_rows); }
// A block's shared memory: the rings, 16 zero bytes, the warps' partial sums.
inline int AsyncBlockBytes(int x_rows, int stages, int m_tiles) {
  return AsyncRingBytes(x_rows, stages) + 16 + kGemmWarps * m_tiles * 4 * 32 * 4;
}

template <typename T, int kMTiles, int kStages, bool kPacked>
cudaError_t LaunchAsync(const SparseGemmArgs& args, int x_rows, cudaStream_t stream) {
  const int bytes = AsyncBlockBytes(x_rows, kStages, kMTiles);
  auto* kernel = SparseGemmAsyncKernel<T, kMTiles, kStages, kPacked>;
  // Raised once per device to the most a block may opt into (it does not change occupancy; the
  // launch's size does): a bit per device id. The device is the current one, which the op made
  // its session's (ScopedDevice); a function attribute is set per device.
  static std::atomic<uint64_t> raised{0};
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if (bit == 0 || (raised.load(std::memory_order_acquire) & bit) == 0) {
    int optin = 0;
    e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (e == cudaSuccess) e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin);
    if (e != cudaSuccess) return e;
    raised.fetch_or(bit, std::memory_order_acq_rel);
  }
  static DependentLaunch dependent;
  bool pdl = false;
  e = dependent.Allowed(kernel, device, args.pdl, &pdl);
  if (e != cudaSuccess) return e;
  const int64_t row_tiles = CeilDiv(args.n, 16);
  const int64_t m_blocks = CeilDiv(args.m, 8 * kMTiles);
  int64_t grid_x = row_tiles;
  if (args.persistent) {
    // As many blocks as the GPU holds at once, shared among the grid's rows of M tiles; each streams
    // row_tiles / grid_x tiles or one more. Counted once per device for this kernel, at its first
    // launch's shared memory (later calls of it may hold a few activation rows more or fewer): the
    // count only sizes the grid, and every grid size computes the same result.
    static std::atomic<int> resident_by_device[64];
    int resident = device < 64 ? resident_by_device[device].load(std::memory_order_relaxed) : 0;
    if (resident == 0) {
      int per_sm = 0, sms = 0;
      e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kGemmWarps * 32, bytes);
      if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
      if (e != cudaSuccess) return e;
      resident = std::max(1, per_sm * sms);
      if (device < 64) resident_by_device[device].store(resident, std::memory_order_relaxed);
    }
    grid_x = std::min<int64_t>(row_tiles, std::max<int64_t>(1, resident / m_blocks));
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(m_blocks));
  config.blockDim = dim3(kGemmWarps * 32);
  config.dynamicSmemBytes = bytes;
  config.stream = stream;
  cudaLaunchAttribute attribute;
  SetDependentLaunch(pdl, &attribute, &config);
  return cudaLaunchKernelEx(&config, kernel, args, x_rows);
}

template <typename T, int kMTiles, bool kPacked>
cudaError_t LaunchAsyncGemm(const SparseGemmArgs& args, cudaStream_t stream) {
  const int x_rows = static_cast<int>(std::min<int64_t>(args.m, 8 * kMTiles));
  int stages = kAsyncMaxStages;
  while (stages > 2 && AsyncBlockBytes(x_rows, stages, kMTiles) > kAsyncBlockBudget) --stages;
  switch (stages) {
    case 6: return LaunchAsync<T, kMTiles, 6, kPacked>(args, x_rows, stream);
    case 5: return LaunchAsync<T, kMTiles, 5, kPacked>(args, x_rows, stream);
    case 4: return LaunchAsync<T, kMTiles, 4, kPacked>(args, x_rows, stream);
    case 3: return LaunchAsync<T, kMTiles, 3, kPacked>(args, x_rows, stream);
    default: return LaunchAsync<T, kMTiles, 2, kPacked>(args, x_rows, stream);
  }
}

}  // namespace onnxsparse::cuda::detail

#define ONNXSPARSE_INSTANTIATE_ASYNC_GEMM(T, PACKED) \
  template cudaError_t onnxsparse::cuda::detail::LaunchAsyncGemm<T, 1, PACKED>( \
      const onnxsparse::cuda::SparseGemmArgs&, cudaStream_t); \
  template cudaError_t onnxsparse::cuda::detail::LaunchAsyncGemm<T, 2, PACKED>( \
      const onnxsparse::cuda::SparseGemmArgs&, cudaStream_t); \
  template cudaError_t onnxsparse::cuda::detail::LaunchAsyncGemm<T, 4, PACKED>( \
      const onnxsparse::cuda::SparseGemmArgs&, cudaStream_t);
