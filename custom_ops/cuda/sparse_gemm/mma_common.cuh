// Device-side pieces shared by the fp16/bf16 sparse GEMM kernel families (registers, async,
// pack_weight): the dense and sparse tensor-core MMAs, group decoding, the block reduction and the
// layout of the packed weight. Included by .cu files only.
//
// The fp16/bf16 kernels read SPEC's compressed 2:4 form (values + 2-bit indexes) directly. Small M
// is memory-bound, so the weight is read once in its compressed form (9/16 of the dense bytes)
// with 16-byte loads, decoded in registers into the A fragments of mma.sync.m16n8k16 (weight rows
// = the MMA's M, activations = its N), accumulated in fp32. The MMA sums over K in any order as
// long as A and B agree, so each thread's four K slots of a fragment (2t, 2t+1, 2t+8, 2t+9) are
// mapped to one whole group of 4 consecutive K: a thread decodes whole groups, and its 8 groups of
// a 128-K chunk are contiguous in memory (values: 32 bytes, index: 4 bytes), the activations too
// (64 bytes). Warps of a block split K; they are summed in shared memory and alpha and bias are
// applied in fp32 before the one rounding.
//
// Every instruction here needs sm_80 or newer (mma.sync m16n8k16, mma.sp m16n8k32, ldmatrix).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/device_common.cuh"
#include "cuda/sparse_gemm_impl.cuh"

namespace onnxsparse::cuda::detail {

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

// The cp.async kernels (async.cuh) keep, per warp and stage (bytes): weight 16 rows x 128, index
// 16 x 16, activations x_rows x 256, the 16-byte pieces of a row XOR-swizzled so that the fragment
// reads are free of bank conflicts.
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

}  // namespace onnxsparse::cuda::detail
