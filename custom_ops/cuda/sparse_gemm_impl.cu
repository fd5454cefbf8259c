// Sparse GEMM kernels reading SPEC's compressed 2:4 form (values + 2-bit indexes) directly.
//
// fp16/bf16 (SparseGemmMmaKernel): memory-bound for small M, so the weight is read once in its
// compressed form (9/16 of the dense bytes) with 16-byte loads, decoded in registers into the A
// fragments of mma.sync.m16n8k16 (weight rows = the MMA's M, activations = its N), accumulated in
// fp32. The MMA sums over K in any order as long as A and B agree, so each thread's four K slots of
// a fragment (2t, 2t+1, 2t+8, 2t+9) are mapped to one whole group of 4 consecutive K: a thread
// decodes whole groups, and its 8 groups of a 128-K chunk are contiguous in memory (values: 32
// bytes, index: 4 bytes), the activations too (64 bytes). Warps of a block split K; they are summed
// in shared memory and alpha and bias are applied in fp32 before the one rounding.
// float (SparseGemmF32Kernel): FMA, a warp per weight row.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>

#include "cuda/device_common.cuh"
#include "cuda/sparse_gemm_impl.cuh"
#include "cuda/static_switch.h"

namespace onnxsparse::cuda {
namespace {

constexpr int kGemmWarps = 8;

template <typename T>
struct Mma;
template <>
struct Mma<__half> {
  static __device__ __forceinline__ void Run(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                             uint32_t b0, uint32_t b1) {
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
};
template <>
struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void Run(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                             uint32_t b0, uint32_t b1) {
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
};

// The sparse tensor-core MMA: A is 16 x 32 with 2 of every 4 along K stored (4 registers of value
// pairs), `meta` the 2-bit positions of those values (ascending within a group), B is 32 x 8.
template <typename T>
struct MmaSp;
template <>
struct MmaSp<__half> {
  static __device__ __forceinline__ void Run(float (&c)[4], const uint4& a, const uint32_t (&b)[4], uint32_t meta) {
    asm("mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(meta));
  }
};
template <>
struct MmaSp<__nv_bfloat16> {
  static __device__ __forceinline__ void Run(float (&c)[4], const uint4& a, const uint32_t (&b)[4], uint32_t meta) {
    asm("mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(meta));
  }
};

// Four 8 x 8 16-bit matrices from shared memory, lane L giving the address of row L % 8 of matrix
// L / 8; register i of lane (g, t) receives row g, columns 2t and 2t + 1 of matrix i.
__device__ __forceinline__ void LoadMatrixX4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// The 16-bit sum of two 16-bit values of type T (rounded once).
template <typename T>
__device__ __forceinline__ uint16_t SumBits(uint16_t a, uint16_t b) {
  T x, y;
  memcpy(&x, &a, 2);
  memcpy(&y, &b, 2);
  const T sum = FromFloat<T>(ToFloat(x) + ToFloat(y));
  uint16_t out;
  memcpy(&out, &sum, 2);
  return out;
}

// Decodes one group: `pair` holds values[2g] (low 16 bits) and values[2g+1] (high), `nibble` the
// group's indexes. Returns the 4 dense 16-bit elements as two 32-bit words (elements 0,1 and 2,3).
// When both values land on one element, SPEC makes it their sum.
template <typename T>
__device__ __forceinline__ void DecodeGroup(uint32_t pair, uint32_t nibble, uint32_t& lo, uint32_t& hi) {
  const uint32_t v0 = pair & 0xFFFFu;
  const uint32_t v1 = pair >> 16;
  const uint32_t p0 = nibble & 3u;
  uint32_t p1 = 1u + ((nibble >> 2) & 3u);
  p1 = p1 > 3u ? 3u : p1;  // an invalid index (3) must not shift out of the group
  uint64_t dense;
  if (p1 != p0) {
    dense = (static_cast<uint64_t>(v0) << (16u * p0)) | (static_cast<uint64_t>(v1) << (16u * p1));
  } else {
    dense = static_cast<uint64_t>(SumBits<T>(static_cast<uint16_t>(v0), static_cast<uint16_t>(v1))) << (16u * p0);
  }
  lo = static_cast<uint32_t>(dense);
  hi = static_cast<uint32_t>(dense >> 32);
}

__device__ __forceinline__ uint4 LoadStreaming16(const void* ptr) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(ptr));
  return v;
}

// The end of both MMA kernels: each warp's accumulators (rows r0 + g, r0 + g + 8 of the weight;
// activation rows m0 + 8 * tile + 2t, +1) go to `partial` (shared, kGemmWarps * kMTiles * 4 * 32
// floats), and the block sums them over the warps, applies alpha and the bias in fp32 and stores.
template <typename T, int kMTiles>
__device__ __forceinline__ void ReduceAndStore(float* partial, const float (&acc)[kMTiles][4], const SparseGemmArgs& p,
                                               int64_t r0, int64_t m0) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int j = 0; j < 4; ++j) partial[(warp * kMTiles * 4 + mt * 4 + j) * 32 + lane] = acc[mt][j];
  __syncthreads();
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  for (int e = threadIdx.x; e < kMTiles * 4 * 32; e += kGemmWarps * 32) {
    const int slot = e >> 5;
    const int ln = e & 31;
    float sum = 0.f;
#pragma unroll
    for (int w = 0; w < kGemmWarps; ++w) sum += partial[(w * kMTiles * 4 + slot) * 32 + ln];
    const int mt = slot >> 2;
    const int j = slot & 3;
    const int64_t col = r0 + (ln >> 2) + (j >= 2 ? 8 : 0);
    const int64_t row = m0 + mt * 8 + 2 * (ln & 3) + (j & 1);
    if (col < p.n && row < p.m) {
      float v = p.alpha * sum;
      if (bias != nullptr) v += ToFloat(bias[col]);
      y[row * p.ldy + col] = FromFloat<T>(v);
    }
  }
}

// Which group of a 128-K chunk (32 groups) a thread (quad lane t) decodes in its MMA step s.
// v3: groups 8t..8t+7 (its 32 value bytes contiguous: a 16-byte load fills half of each sector it
// touches, so every sector is fetched twice). Remapped (v4): groups 4t..4t+3 and 16+4t..16+4t+3,
// so each 16-byte load instruction of the warp covers whole sectors (4 lanes: 64 contiguous bytes).
template <bool kRemap>
__device__ __forceinline__ int GroupOf(int t, int s) {
  if constexpr (kRemap) return s < 4 ? 4 * t + s : 16 + 4 * t + (s - 4);
  else return 8 * t + s;
}

// Loads a thread's 8 groups of chunk c of one weight row: value pairs and nibbles (nibble s in bits
// 4s..4s+3).
template <bool kFull, bool kRemap>
__device__ __forceinline__ void LoadWeightGroups(const uint16_t* __restrict__ values, const uint8_t* __restrict__ index,
                                                 int64_t row, bool row_ok, int64_t half_k, int64_t index_stride,
                                                 int64_t c, int t, int64_t ngroups, uint32_t (&pairs)[8],
                                                 uint32_t& nibbles) {
  if (kFull) {
    if (row_ok) {
      const uint16_t* v = values + row * half_k + c * 64;
      const uint8_t* ix = index + row * index_stride + c * 16;
      uint4 q0, q1;
      if constexpr (kRemap) {
        q0 = LoadStreaming16(v + 8 * t);
        q1 = LoadStreaming16(v + 32 + 8 * t);
        nibbles = static_cast<uint32_t>(__ldg(reinterpret_cast<const uint16_t*>(ix + 2 * t))) |
                  (static_cast<uint32_t>(__ldg(reinterpret_cast<const uint16_t*>(ix + 8 + 2 * t))) << 16);
      } else {
        q0 = LoadStreaming16(v + 16 * t);
        q1 = LoadStreaming16(v + 16 * t + 8);
        nibbles = __ldg(reinterpret_cast<const uint32_t*>(ix + 4 * t));
      }
      pairs[0] = q0.x, pairs[1] = q0.y, pairs[2] = q0.z, pairs[3] = q0.w;
      pairs[4] = q1.x, pairs[5] = q1.y, pairs[6] = q1.z, pairs[7] = q1.w;
    } else {
#pragma unroll
      for (int s = 0; s < 8; ++s) pairs[s] = 0;
      nibbles = 0;
    }
  } else {
    nibbles = 0;
#pragma unroll
    for (int s = 0; s < 8; ++s) {
      const int64_t g = c * 32 + GroupOf<kRemap>(t, s);
      pairs[s] = 0;
      if (row_ok && g < ngroups) {
        pairs[s] = __ldg(reinterpret_cast<const uint32_t*>(values + row * half_k + 2 * g));
        const uint32_t byte = __ldg(index + row * index_stride + g / 2);
        nibbles |= ((g & 1) ? (byte >> 4) : (byte & 0xFu)) << (4 * s);
      }
    }
  }
}

// One chunk (128 K) of a warp's work: the weight of its 16 rows (thread: rows g and g+8, 8 groups
// each) and, when kWithX, the activations of its kMTiles tiles (8 rows each, 32 elements).
template <int kMTiles, bool kWithX>
struct Stage {
  uint32_t pa[8], pb[8], na, nb;
  uint32_t xf[kWithX ? kMTiles : 1][16];
};

// Activations of chunk c: row m0 + 8*tile + g, the 8 groups GroupOf(t, 0..7) (two words per group).
template <int kMTiles, bool kRemap>
__device__ __forceinline__ void LoadActivations(const SparseGemmArgs& p, int64_t m0, int g, int t, int64_t c,
                                                int64_t ngroups, bool full, uint32_t (&xf)[kMTiles][16]) {
  const uint16_t* x = static_cast<const uint16_t*>(p.x);
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
    const int64_t row = m0 + mt * 8 + g;
    const uint16_t* xr = x + row * p.k + c * 128;
    if (row < p.m && full) {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        // q covers steps 2q, 2q+1: 8 elements.
        const int first = kRemap ? (q < 2 ? 16 * t + 8 * q : 64 + 16 * t + 8 * (q - 2)) : 32 * t + 8 * q;
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(xr + first));
        xf[mt][4 * q + 0] = v.x, xf[mt][4 * q + 1] = v.y, xf[mt][4 * q + 2] = v.z, xf[mt][4 * q + 3] = v.w;
      }
    } else {
#pragma unroll
      for (int s = 0; s < 8; ++s) {
        uint2 v = make_uint2(0, 0);
        const int64_t grp = c * 32 + GroupOf<kRemap>(t, s);
        if (row < p.m && grp < ngroups) v = __ldg(reinterpret_cast<const uint2*>(x + row * p.k) + grp);
        xf[mt][2 * s] = v.x, xf[mt][2 * s + 1] = v.y;
      }
    }
  }
}

// v3: a register pipeline two chunks deep per warp (the loads of chunk i+1 are in flight while
// chunk i is decoded and multiplied), and at most 128 registers per thread so that two blocks of 8
// warps share an SM (v2 took 162-220 registers: one block per SM, 256 blocks of K=N=4096 in two
// waves; 4 tiles (M 17..32) keep one block per SM: capped at 128 they spill). For M <= 8 the
// activations travel in the stage too; for more tiles they are loaded at use (from L2: X is small).
template <typename T, int kMTiles, bool kAligned, bool kRemap>
__global__ void __launch_bounds__(kGemmWarps * 32, kMTiles <= 2 ? 2 : 1) SparseGemmMmaKernel(SparseGemmArgs p) {
  constexpr bool kStageX = kMTiles == 1;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * (8 * kMTiles);
  const int64_t ra = r0 + g;
  const int64_t rb = r0 + g + 8;
  const bool ra_ok = ra < p.n;
  const bool rb_ok = rb < p.n;
  const int64_t ngroups = p.k / 4;
  const int64_t half_k = p.k / 2;
  const int64_t index_stride = (p.k + 7) / 8;
  const uint16_t* values = static_cast<const uint16_t*>(p.values);
  const int64_t nchunks = (ngroups + 31) / 32;

  float acc[kMTiles][4];
#pragma unroll
  for (int i = 0; i < kMTiles; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;

  auto load = [&](int64_t c, Stage<kMTiles, kStageX>& st) {
    if (c >= nchunks) return;
    const bool full = kAligned && c * 32 + 32 <= ngroups;
    if (full) {
      LoadWeightGroups<true, kRemap>(values, p.index, ra, ra_ok, half_k, index_stride, c, t, ngroups, st.pa, st.na);
      LoadWeightGroups<true, kRemap>(values, p.index, rb, rb_ok, half_k, index_stride, c, t, ngroups, st.pb, st.nb);
    } else {
      LoadWeightGroups<false, kRemap>(values, p.index, ra, ra_ok, half_k, index_stride, c, t, ngroups, st.pa, st.na);
      LoadWeightGroups<false, kRemap>(values, p.index, rb, rb_ok, half_k, index_stride, c, t, ngroups, st.pb, st.nb);
    }
    if constexpr (kStageX) LoadActivations<kMTiles, kRemap>(p, m0, g, t, c, ngroups, full, st.xf);
  };
  auto compute = [&](int64_t c, const Stage<kMTiles, kStageX>& st) {
    const bool full = kAligned && c * 32 + 32 <= ngroups;
    uint32_t xl[kStageX ? 1 : kMTiles][16];
    if constexpr (!kStageX) LoadActivations<kMTiles, kRemap>(p, m0, g, t, c, ngroups, full, xl);
    const auto& xf = [&]() -> const auto& {
      if constexpr (kStageX) return st.xf;
      else return xl;
    }();
#pragma unroll
    for (int s = 0; s < 8; ++s) {
      uint32_t a0, a1, a2, a3;
      DecodeGroup<T>(st.pa[s], (st.na >> (4 * s)) & 0xFu, a0, a2);
      DecodeGroup<T>(st.pb[s], (st.nb >> (4 * s)) & 0xFu, a1, a3);
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) Mma<T>::Run(acc[mt], a0, a1, a2, a3, xf[mt][2 * s], xf[mt][2 * s + 1]);
    }
  };

  // Warps take chunks warp, warp + 8, ...: at any time a block reads 8 consecutive chunks of its rows.
  Stage<kMTiles, kStageX> s0, s1;
  load(warp, s0);
  load(warp + kGemmWarps, s1);
#pragma unroll 1
  for (int64_t c = warp; c < nchunks; c += 2 * kGemmWarps) {
    compute(c, s0);
    load(c + 2 * kGemmWarps, s0);
    if (c + kGemmWarps >= nchunks) break;
    compute(c + kGemmWarps, s1);
    load(c + 3 * kGemmWarps, s1);
  }

  __shared__ float partial[kGemmWarps * kMTiles * 4 * 32];
  ReduceAndStore<T, kMTiles>(partial, acc, p, r0, m0);
}

// v5: the same MMA mapping as v4 (remapped groups), fed by a cp.async ring per warp instead of
// registers, so that a warp keeps kStages chunks of its 16 weight rows in flight (v3/v4: two, held
// in registers) and every global load is a whole 16-byte piece of a 128-byte line. A warp copies
// and reads only its own ring, so __syncwarp orders it; no block barrier until the reduction.
// Needs K % 128 == 0 and 16-byte aligned values, index and activations.
// Per warp and stage (bytes): weight 16 rows x 128, index 16 x 16, activations x_rows x 256, the
// 16-byte pieces of a row XOR-swizzled so that the fragment reads are free of bank conflicts.
constexpr int kAsyncWRowBytes = 128;
constexpr int kAsyncWBytes = 16 * kAsyncWRowBytes;
constexpr int kAsyncIndexBytes = 16 * 16;
constexpr int kAsyncXRowBytes = 256;
// The packed weight: tile (row block b of 16 rows, chunk c of 128 K) at (b * K / 128 + c) * this
// many bytes: the A registers of the chunk's 4 sparse MMAs, then their metadata (PackWeightKernel),
// copied as they are into a stage's weight and index area.
constexpr int kPackedTileBytes = kAsyncWBytes + kAsyncIndexBytes;

__host__ __device__ constexpr int AsyncStageBytes(int x_rows) {
  return kAsyncWBytes + kAsyncIndexBytes + x_rows * kAsyncXRowBytes;
}

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
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * (8 * kMTiles);
  const int valid_x = static_cast<int>(p.m - m0 < x_rows ? p.m - m0 : x_rows);
  const int64_t half_k = p.k / 2;
  const int64_t index_stride = p.k / 8;
  const int64_t nchunks = p.k / 128;
  const int stage_bytes = AsyncStageBytes(x_rows);
  const uint32_t my_ring = static_cast<uint32_t>(__cvta_generic_to_shared(ring)) + warp * kStages * stage_bytes;
  // 16 zero bytes after the rings: what ldmatrix reads for activation rows past M.
  const uint32_t zero_piece = static_cast<uint32_t>(__cvta_generic_to_shared(ring)) + kGemmWarps * kStages * stage_bytes;
  if constexpr (kPacked) {
    if (threadIdx.x < 4) reinterpret_cast<uint32_t*>(ring + kGemmWarps * kStages * stage_bytes)[threadIdx.x] = 0u;
    __syncthreads();
  }
  const uint16_t* values = static_cast<const uint16_t*>(p.values);
  const uint16_t* x = static_cast<const uint16_t*>(p.x);

  // Copies the weight (values and index) of chunk c into stage st; nothing when c is past the end.
  // From the packed form a stage is one contiguous tile, already in the ring's order.
  auto issue_weight = [&](int64_t c, int st) {
    if (c >= nchunks) return;
    const uint32_t base = my_ring + st * stage_bytes;
    if constexpr (kPacked) {
      const unsigned char* tile =
          static_cast<const unsigned char*>(p.packed) + (blockIdx.x * nchunks + c) * kPackedTileBytes;
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
  // Copies the activations of chunk c into stage st.
  auto issue_x = [&](int64_t c, int st) {
    if (c >= nchunks) return;
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
#pragma unroll
  for (int i = 0; i < kMTiles; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;

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

  // Warps take chunks warp, warp + 8, ...: a block reads 8 consecutive chunks of its rows at a time.
  // Launched as a programmatic dependent (PDL), a constant weight is fetched before the wait for
  // the previous kernel, whose output may be X; the first commit group then holds the weight of
  // every prologue stage. Without PDL the wait returns at once.
  if (p.weight_constant) {
#pragma unroll
    for (int st = 0; st < kStages - 1; ++st) issue_weight(warp + st * kGemmWarps, st);
  }
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (!p.weight_constant) issue_weight(warp + st * kGemmWarps, st);
    issue_x(warp + st * kGemmWarps, st);
    CpAsyncCommit();
  }
  int st = 0;
#pragma unroll 1
  for (int64_t c = warp; c < nchunks; c += kGemmWarps) {
    CpAsyncWait<kStages - 2>();
    __syncwarp();  // chunk c has landed for every lane, and every lane is done with the stage reused next
    const int next = st == 0 ? kStages - 1 : st - 1;
    issue_weight(c + (kStages - 1) * kGemmWarps, next);
    issue_x(c + (kStages - 1) * kGemmWarps, next);
    CpAsyncCommit();
    if constexpr (kPacked) compute_packed(st);
    else compute_decoded(st);
    st = st + 1 == kStages ? 0 : st + 1;
  }
  // The next kernel, when launched as a programmatic dependent, may start its prologue now (its
  // own wait still waits for this grid to finish).
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  CpAsyncWait<0>();
  __syncthreads();  // the ring is free: the partial sums go there

  ReduceAndStore<T, kMTiles>(reinterpret_cast<float*>(ring), acc, p, r0, m0);
}

// Shared memory of one v5 block with kStages stages; the stage count for a given M is the largest
// that keeps a block within kAsyncBlockBudget, so that two blocks share an SM where they fit.
constexpr int kAsyncBlockBudget = 100 * 1024;
constexpr int kAsyncMaxStages = 6;
inline int AsyncRingBytes(int x_rows, int stages) { return kGemmWarps * stages * AsyncStageBytes(x_rows); }

template <typename T, int kMTiles, int kStages, bool kPacked>
cudaError_t LaunchAsync(const SparseGemmArgs& args, int x_rows, cudaStream_t stream) {
  const int bytes = std::max(AsyncRingBytes(x_rows, kStages) + 16, kGemmWarps * kMTiles * 4 * 32 * 4);
  auto* kernel = SparseGemmAsyncKernel<T, kMTiles, kStages, kPacked>;
  // Raised once per device to the most a block may opt into (it does not change occupancy; the
  // launch's size does): a bit per device id.
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
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(CeilDiv(args.n, 16), CeilDiv(args.m, 8 * kMTiles));
  config.blockDim = dim3(kGemmWarps * 32);
  config.dynamicSmemBytes = bytes;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = args.pdl ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, args, x_rows);
}

template <typename T, int kMTiles>
cudaError_t LaunchAsyncStages(const SparseGemmArgs& args, cudaStream_t stream) {
  const int x_rows = static_cast<int>(std::min<int64_t>(args.m, 8 * kMTiles));
  int stages = kAsyncMaxStages;
  while (stages > 2 && AsyncRingBytes(x_rows, stages) > kAsyncBlockBudget) --stages;
  return BOOL_SWITCH(args.packed != nullptr, kPacked, [&] {
    switch (stages) {
      case 6: return LaunchAsync<T, kMTiles, 6, kPacked>(args, x_rows, stream);
      case 5: return LaunchAsync<T, kMTiles, 5, kPacked>(args, x_rows, stream);
      case 4: return LaunchAsync<T, kMTiles, 4, kPacked>(args, x_rows, stream);
      case 3: return LaunchAsync<T, kMTiles, 3, kPacked>(args, x_rows, stream);
      default: return LaunchAsync<T, kMTiles, 2, kPacked>(args, x_rows, stream);
    }
  });
}

// Group `group` of weight row `row` in the sparse MMA's terms: its two values (low 16 bits first)
// and their positions, ascending (2 bits each). SPEC's positions come in either order, and the two
// may name one element, whose value is then their sum; rows past n are zero.
template <typename T>
__device__ __forceinline__ void EncodeGroup(const uint16_t* values, const uint8_t* index, int64_t n, int64_t k,
                                            int64_t row, int64_t group, uint32_t& pair, uint32_t& nibble) {
  pair = 0;
  nibble = 0x4u;  // positions 0 and 1
  if (row >= n) return;
  const uint32_t v0 = values[row * (k / 2) + 2 * group];
  const uint32_t v1 = values[row * (k / 2) + 2 * group + 1];
  const uint32_t byte = index[row * (k / 8) + group / 2];
  const uint32_t nib = (group & 1) ? byte >> 4 : byte & 0xFu;
  const uint32_t p0 = nib & 3u;
  const uint32_t p1 = min(3u, 1u + ((nib >> 2) & 3u));
  if (p0 < p1) {
    pair = v0 | (v1 << 16), nibble = p0 | (p1 << 2);
  } else if (p0 > p1) {
    pair = v1 | (v0 << 16), nibble = p1 | (p0 << 2);
  } else {  // p0 = p1 >= 1: a zero at position 0, the sum at p0
    pair = static_cast<uint32_t>(SumBits<T>(static_cast<uint16_t>(v0), static_cast<uint16_t>(v1))) << 16;
    nibble = p0 << 2;
  }
}

// One thread per 16-byte piece of the packed form (see kPackedTileBytes and compute_packed).
template <typename T>
__global__ void PackWeightKernel(const uint16_t* __restrict__ values, const uint8_t* __restrict__ index, int64_t n,
                                 int64_t k, int64_t pieces, uint4* __restrict__ packed) {
  constexpr int kPieces = kPackedTileBytes / 16;
  const int64_t nchunks = k / 128;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= pieces) return;
  const int64_t tile = i / kPieces;
  const int piece = static_cast<int>(i % kPieces);
  const int64_t r0 = tile / nchunks * 16;
  const int64_t g0 = tile % nchunks * 32;  // first group of the chunk
  uint32_t out[4];
  if (piece < kAsyncWBytes / 16) {
    const int j = piece >> 5;
    const int lane = piece & 31;
    const int g = lane >> 2;
    const int t = lane & 3;
    uint32_t unused;
    EncodeGroup<T>(values, index, n, k, r0 + g, g0 + 8 * j + t, out[0], unused);
    EncodeGroup<T>(values, index, n, k, r0 + g + 8, g0 + 8 * j + t, out[1], unused);
    EncodeGroup<T>(values, index, n, k, r0 + g, g0 + 8 * j + t + 4, out[2], unused);
    EncodeGroup<T>(values, index, n, k, r0 + g + 8, g0 + 8 * j + t + 4, out[3], unused);
  } else {
    const int e = piece - kAsyncWBytes / 16;
    const int g = e >> 1;
    const int half = e & 1;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      uint32_t meta = 0;
      for (int c = 0; c < 4; ++c) {
        uint32_t pair, lo, hi;
        EncodeGroup<T>(values, index, n, k, r0 + g, g0 + 8 * j + 4 * half + c, pair, lo);
        EncodeGroup<T>(values, index, n, k, r0 + g + 8, g0 + 8 * j + 4 * half + c, pair, hi);
        meta |= (lo << (4 * c)) | (hi << (16 + 4 * c));
      }
      out[j] = meta;
    }
  }
  packed[i] = make_uint4(out[0], out[1], out[2], out[3]);
}

constexpr int kF32Rows = 8;  // activation rows per warp

__global__ void __launch_bounds__(128) SparseGemmF32Kernel(SparseGemmArgs p) {
  const int lane = threadIdx.x & 31;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * 4 + (threadIdx.x >> 5);
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kF32Rows;
  if (col >= p.n) return;
  const int64_t ngroups = p.k / 4;
  const float* values = static_cast<const float*>(p.values) + col * (p.k / 2);
  const uint8_t* index = p.index + col * ((p.k + 7) / 8);
  const float* x = static_cast<const float*>(p.x);
  float acc[kF32Rows] = {};
  for (int64_t g = lane; g < ngroups; g += 32) {
    const float v0 = values[2 * g];
    const float v1 = values[2 * g + 1];
    const uint32_t byte = index[g / 2];
    const uint32_t nibble = (g & 1) ? (byte >> 4) : (byte & 0xFu);
    const int64_t e0 = 4 * g + (nibble & 3u);
    const int64_t e1 = 4 * g + min(3u, 1u + ((nibble >> 2) & 3u));
#pragma unroll
    for (int i = 0; i < kF32Rows; ++i) {
      const int64_t row = m0 + i;
      if (row < p.m) acc[i] += v0 * x[row * p.k + e0] + v1 * x[row * p.k + e1];
    }
  }
#pragma unroll
  for (int i = 0; i < kF32Rows; ++i) {
    float v = acc[i];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, off);
    acc[i] = v;
  }
  if (lane < kF32Rows && m0 + lane < p.m) {
    float v = 0.f;
#pragma unroll
    for (int i = 0; i < kF32Rows; ++i) v = (i == lane) ? acc[i] : v;
    v *= p.alpha;
    if (p.bias != nullptr) v += static_cast<const float*>(p.bias)[col];
    static_cast<float*>(p.y)[(m0 + lane) * p.ldy + col] = v;
  }
}

template <typename T>
__global__ void DecompressKernel(const T* __restrict__ values, const uint8_t* __restrict__ index, int64_t rows,
                                 int64_t k, T* __restrict__ dense) {
  const int64_t ngroups = k / 4;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * ngroups) return;
  const int64_t row = i / ngroups;
  const int64_t g = i % ngroups;
  const uint32_t byte = index[row * ((k + 7) / 8) + g / 2];
  const uint32_t nibble = (g & 1) ? (byte >> 4) : (byte & 0xFu);
  float out[4] = {0.f, 0.f, 0.f, 0.f};
  out[nibble & 3u] += ToFloat(values[row * (k / 2) + 2 * g]);
  out[min(3u, 1u + ((nibble >> 2) & 3u))] += ToFloat(values[row * (k / 2) + 2 * g + 1]);
#pragma unroll
  for (int e = 0; e < 4; ++e) dense[row * k + 4 * g + e] = FromFloat<T>(out[e]);
}

template <typename T>
__global__ void AddBiasKernel(T* y, int64_t m, int64_t n, int64_t ldy, const T* __restrict__ bias) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= m * n) return;
  const int64_t row = i / n;
  const int64_t col = i % n;
  T& v = y[row * ldy + col];
  v = FromFloat<T>(ToFloat(v) + ToFloat(bias[col]));
}

template <typename T>
__global__ void TransposeKernel(const T* __restrict__ in, T* __restrict__ out, int64_t rows, int64_t cols,
                                const T* __restrict__ bias) {
  __shared__ T tile[32][33];
  const int64_t b = blockIdx.z;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * 32;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * 32;
  const T* src = in + b * rows * cols;
  T* dst = out + b * rows * cols;
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int64_t r = r0 + i;
    const int64_t c = c0 + threadIdx.x;
    if (r < rows && c < cols) tile[i][threadIdx.x] = src[r * cols + c];
  }
  __syncthreads();
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int64_t c = c0 + i;
    const int64_t r = r0 + threadIdx.x;
    if (r < rows && c < cols) {
      T v = tile[threadIdx.x][i];
      if (bias != nullptr) v = FromFloat<T>(ToFloat(v) + ToFloat(bias[c]));
      dst[c * rows + r] = v;
    }
  }
}

}  // namespace

template <typename T>
cudaError_t LaunchSparseGemm(const SparseGemmArgs& args, cudaStream_t stream) {
  if (args.m <= 0 || args.n <= 0) return cudaSuccess;
  if constexpr (std::is_same_v<T, float>) {
    const dim3 grid(CeilDiv(args.n, 4), CeilDiv(args.m, kF32Rows));
    SparseGemmF32Kernel<<<grid, 128, 0, stream>>>(args);
  } else {
    // 16-byte loads of values and activations need K % 32 == 0 (row starts aligned); the other
    // shapes take the per-group path of the register-pipeline kernel.
    const bool aligned = args.k % 32 == 0 && reinterpret_cast<uintptr_t>(args.values) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(args.x) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(args.index) % 4 == 0;
    // Variant 0 chooses: the packed weight when there is one (sparse tensor cores), else the
    // cp.async decoding kernel where the shape allows, else the register kernels (measured on an
    // H200 with benchmarks/cuda/probe.py own: v3 is faster at M <= 4, v4 above).
    const bool x_ok = args.k % 128 == 0 && reinterpret_cast<uintptr_t>(args.x) % 16 == 0;
    const bool async_ok = x_ok && reinterpret_cast<uintptr_t>(args.values) % 16 == 0 &&
                          reinterpret_cast<uintptr_t>(args.index) % 16 == 0;
    const int registers = args.m <= 4 ? 3 : 4;
    int variant = args.variant;
    if (variant == 0 || variant == 7) variant = args.packed != nullptr && x_ok ? 7 : (async_ok ? 5 : registers);
    if (variant == 5 && !async_ok) variant = registers;
    if (variant == 5 || variant == 7) {
      SparseGemmArgs a = args;
      if (variant == 5) a.packed = nullptr;
      return M_TILES_SWITCH(a.m, kTiles, [&] { return LaunchAsyncStages<T, kTiles>(a, stream); });
    }
    M_TILES_SWITCH(args.m, kTiles, [&] {
      BOOL_SWITCH(aligned, kAligned, [&] {
        const dim3 grid(CeilDiv(args.n, 16), CeilDiv(args.m, 8 * kTiles));
        if (variant == 3) SparseGemmMmaKernel<T, kTiles, kAligned, false><<<grid, kGemmWarps * 32, 0, stream>>>(args);
        else SparseGemmMmaKernel<T, kTiles, kAligned, true><<<grid, kGemmWarps * 32, 0, stream>>>(args);
      });
    });
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchDecompress(const T* values, const uint8_t* index, int64_t rows, int64_t k, T* dense,
                             cudaStream_t stream) {
  const int64_t total = rows * (k / 4);
  if (total == 0) return cudaSuccess;
  DecompressKernel<T><<<CeilDiv(total, 256), 256, 0, stream>>>(values, index, rows, k, dense);
  return cudaGetLastError();
}

bool CanPackWeight(int64_t k, const void* values, const uint8_t* index) {
  return k > 0 && k % 128 == 0 && reinterpret_cast<uintptr_t>(values) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(index) % 16 == 0;
}

size_t PackedWeightBytes(int64_t n, int64_t k) {
  return static_cast<size_t>(CeilDiv(n, 16)) * static_cast<size_t>(k / 128) * kPackedTileBytes;
}

template <typename T>
cudaError_t LaunchPackWeight(const void* values, const uint8_t* index, int64_t n, int64_t k, void* packed,
                             cudaStream_t stream) {
  const int64_t pieces = static_cast<int64_t>(PackedWeightBytes(n, k) / 16);
  if (pieces == 0) return cudaSuccess;
  PackWeightKernel<T><<<CeilDiv(pieces, 256), 256, 0, stream>>>(static_cast<const uint16_t*>(values), index, n, k,
                                                               pieces, static_cast<uint4*>(packed));
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchAddBias(T* y, int64_t m, int64_t n, int64_t ldy, const T* bias, cudaStream_t stream) {
  if (m * n == 0) return cudaSuccess;
  AddBiasKernel<T><<<CeilDiv(m * n, 256), 256, 0, stream>>>(y, m, n, ldy, bias);
  return cudaGetLastError();
}

template <typename T>
cudaError_t LaunchTranspose(const T* in, T* out, int64_t batch, int64_t rows, int64_t cols, const T* bias,
                            cudaStream_t stream) {
  if (batch * rows * cols == 0) return cudaSuccess;
  const dim3 grid(CeilDiv(cols, 32), CeilDiv(rows, 32), static_cast<unsigned int>(batch));
  TransposeKernel<T><<<grid, dim3(32, 8), 0, stream>>>(in, out, rows, cols, bias);
  return cudaGetLastError();
}

#define ONNXSPARSE_INSTANTIATE(T)                                                                              \
  template cudaError_t LaunchDecompress<T>(const T*, const uint8_t*, int64_t, int64_t, T*, cudaStream_t);      \
  template cudaError_t LaunchAddBias<T>(T*, int64_t, int64_t, int64_t, const T*, cudaStream_t);                \
  template cudaError_t LaunchTranspose<T>(const T*, T*, int64_t, int64_t, int64_t, const T*, cudaStream_t); \
  template cudaError_t LaunchSparseGemm<T>(const SparseGemmArgs&, cudaStream_t);

ONNXSPARSE_INSTANTIATE(float)
ONNXSPARSE_INSTANTIATE(__half)
ONNXSPARSE_INSTANTIATE(__nv_bfloat16)
#undef ONNXSPARSE_INSTANTIATE
template cudaError_t LaunchPackWeight<__half>(const void*, const uint8_t*, int64_t, int64_t, void*, cudaStream_t);
template cudaError_t LaunchPackWeight<__nv_bfloat16>(const void*, const uint8_t*, int64_t, int64_t, void*,
                                                     cudaStream_t);

}  // namespace onnxsparse::cuda

namespace onnxsparse::cuda {
namespace {
__global__ void CountInvalidNibblesKernel(const uint8_t* __restrict__ index, int64_t rows, int64_t k,
                                          unsigned int* invalid_count) {
  const int64_t stride = (k + 7) / 8;
  const int64_t ngroups = k / 4;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * stride) return;
  const int64_t byte_in_row = i % stride;
  const uint32_t byte = index[i];
  unsigned int bad = 0;
  for (int half = 0; half < 2; ++half) {
    const int64_t g = 2 * byte_in_row + half;
    const uint32_t nib = (byte >> (4 * half)) & 0xFu;
    if (g < ngroups) bad += ((nib & 3u) == 3u || (nib & 0xCu) == 0xCu) ? 1u : 0u;
  }
  if (bad) atomicAdd(invalid_count, bad);
}
}  // namespace

cudaError_t LaunchCountInvalidNibbles(const uint8_t* index, int64_t rows, int64_t k, unsigned int* invalid_count,
                                      cudaStream_t stream) {
  const int64_t total = rows * ((k + 7) / 8);
  if (total == 0) return cudaSuccess;
  CountInvalidNibblesKernel<<<CeilDiv(total, 256), 256, 0, stream>>>(index, rows, k, invalid_count);
  return cudaGetLastError();
}
}  // namespace onnxsparse::cuda
