// The int8 kernels of QMatMulCompress and QConv2dCompress (qgemm_impl.cuh): the own sparse GEMM
// with its fused epilogue, the standalone epilogue after cuSPARSELt, and the small passes around
// them (activation shift, weight row sums, decompression, im2col). Every instruction needs sm_80
// or newer (mma.sync m16n8k32 with s8 operands); nothing here is Hopper-only.
//
// The own kernel is for small M, where the GEMM is bound by reading the weight: the weight is read
// once in SPEC's form (values: K/2 bytes a row, index: K/8), 5/8 of the dense int8 bytes, with
// 16-byte loads, and decoded in registers into the A fragments of the dense int8 tensor-core MMA
// (weight rows = the MMA's M, activation rows = its N). The MMA sums over K in any order as long as
// A and B agree: each 32-bit register of a thread's A fragment holds 4 consecutive K slots (4t..4t+3
// or 16+4t..16+4t+3), which are mapped to one whole group of 4 of the weight, so a thread decodes
// whole groups, and the activation register holding the same slots is the group's 4 bytes.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/device_common.cuh"
#include "cuda/qgemm_impl.cuh"
#include "cuda/static_switch.h"

namespace onnxsparse::cuda {

namespace {

constexpr int kWarps = 8;

// ---------------------------------------------------------------------------------------------
// The epilogue, shared by the own kernel's store and the standalone pass.

__device__ __forceinline__ int64_t OutputOffset(const QEpilogue& e, int64_t m, int64_t col) {
  m += e.m_offset;
  if (e.hw == 0) return m * e.ldy + col;
  return (m / e.hw * e.ldy + col) * e.hw + m % e.hw;
}

// The effective zero point zp' of A' (uint8: zp - 128; an absent zero point is 0).
__device__ __forceinline__ int32_t EffectiveZeroPoint(const QEpilogue& e) {
  if (e.a_unsigned) {
    const int32_t zp = e.a_zero_point != nullptr ? static_cast<int32_t>(*static_cast<const uint8_t*>(e.a_zero_point)) : 0;
    return zp - 128;
  }
  return e.a_zero_point != nullptr ? static_cast<int32_t>(*static_cast<const int8_t*>(e.a_zero_point)) : 0;
}

// The output zero point as a float (0 for a float output or an absent zero point).
__device__ __forceinline__ float OutputZeroPoint(const QEpilogue& e) {
  if (e.y_zero_point == nullptr || QOutIsFloat(e.out_type)) return 0.f;
  return e.out_type == QOutType::kUint8 ? static_cast<float>(*static_cast<const uint8_t*>(e.y_zero_point))
                                        : static_cast<float>(*static_cast<const int8_t*>(e.y_zero_point));
}

// One output element of column col (n_offset included) from the product's raw sum: the float
// value, or the quantized one (an integer in TY's range, as a float).
// acc = raw - zp' * wsum[col] + bias[col], in int32 with wrap-around: the exact value fits in int32
// (docs/ops.md), so the modular sum is exact.
// The column's offset (bias - zp' * wsum) and multiplier: a_scale * w_scale (float output) or
// that / y_scale (quantized).
__device__ __forceinline__ int32_t ColumnOffset(const QEpilogue& e, int32_t zp, int64_t col) {
  uint32_t offset = 0u - static_cast<uint32_t>(zp) * static_cast<uint32_t>(e.wsum[col]);
  if (e.bias != nullptr) offset += static_cast<uint32_t>(e.bias[col]);
  return static_cast<int32_t>(offset);
}
__device__ __forceinline__ float ColumnScale(const QEpilogue& e, int64_t col) {
  const float a_scale = e.out_type == QOutType::kHalf ? __half2float(*static_cast<const __half*>(e.a_scale))
                                                      : *static_cast<const float*>(e.a_scale);
  const float scale = __fmul_rn(a_scale, e.w_per_channel ? e.w_scale[col] : e.w_scale[0]);
  return QOutIsFloat(e.out_type) ? scale : __fdiv_rn(scale, *e.y_scale);
}

// The output value from the accumulator's raw sum and the column's terms.
__device__ __forceinline__ float QValueFromTerms(const QEpilogue& e, float zp_y, int32_t raw, int32_t offset,
                                                 float multiplier) {
  const int32_t acc = static_cast<int32_t>(static_cast<uint32_t>(raw) + static_cast<uint32_t>(offset));
  float v = __fmul_rn(static_cast<float>(acc), multiplier);
  if (e.relu) v = fmaxf(v, 0.f);
  if (QOutIsFloat(e.out_type)) return v;
  const float q = rintf(v) + zp_y;  // round half to even, then the zero point
  return e.out_type == QOutType::kUint8 ? fminf(fmaxf(q, 0.f), 255.f) : fminf(fmaxf(q, -128.f), 127.f);
}

__device__ __forceinline__ float QValue(const QEpilogue& e, int32_t zp, float zp_y, int64_t col, int32_t raw) {
  if (e.col_scale != nullptr) return QValueFromTerms(e, zp_y, raw, e.col_offset[col], e.col_scale[col]);
  return QValueFromTerms(e, zp_y, raw, ColumnOffset(e, zp, col), ColumnScale(e, col));
}

__device__ __forceinline__ void StoreQ(const QEpilogue& e, int32_t zp, float zp_y, int64_t m, int64_t n, int32_t raw) {
  const int64_t col = e.n_offset + n;
  const float v = QValue(e, zp, zp_y, col, raw);
  const int64_t at = OutputOffset(e, m, col);
  if (e.out_type == QOutType::kFloat) static_cast<float*>(e.y)[at] = v;
  else if (e.out_type == QOutType::kHalf) static_cast<__half*>(e.y)[at] = __float2half_rn(v);
  else if (e.out_type == QOutType::kUint8) static_cast<uint8_t*>(e.y)[at] = static_cast<uint8_t>(static_cast<int>(v));
  else static_cast<int8_t*>(e.y)[at] = static_cast<int8_t>(static_cast<int>(v));
}

// Four consecutive columns n..n+3 of row m of a row-major Y (hw == 0), stored at once: the caller
// checked that the row stride, the first column and Y allow the vector store.
__device__ __forceinline__ void StoreQ4(const QEpilogue& e, int32_t zp, float zp_y, int64_t m, int64_t n,
                                        const int4& raw) {
  const int64_t col = e.n_offset + n;
  float v0, v1, v2, v3;
  if (e.col_scale != nullptr) {  // 16-byte aligned: col is a multiple of 4
    const int4 o = *reinterpret_cast<const int4*>(e.col_offset + col);
    const float4 s = *reinterpret_cast<const float4*>(e.col_scale + col);
    v0 = QValueFromTerms(e, zp_y, raw.x, o.x, s.x), v1 = QValueFromTerms(e, zp_y, raw.y, o.y, s.y);
    v2 = QValueFromTerms(e, zp_y, raw.z, o.z, s.z), v3 = QValueFromTerms(e, zp_y, raw.w, o.w, s.w);
  } else {
    v0 = QValue(e, zp, zp_y, col, raw.x), v1 = QValue(e, zp, zp_y, col + 1, raw.y);
    v2 = QValue(e, zp, zp_y, col + 2, raw.z), v3 = QValue(e, zp, zp_y, col + 3, raw.w);
  }
  const int64_t at = (m + e.m_offset) * e.ldy + col;
  if (e.out_type == QOutType::kFloat) {
    *reinterpret_cast<float4*>(static_cast<float*>(e.y) + at) = make_float4(v0, v1, v2, v3);
  } else if (e.out_type == QOutType::kHalf) {
    const __half2 lo = __floats2half2_rn(v0, v1), hi = __floats2half2_rn(v2, v3);
    uint2 packed;
    packed.x = *reinterpret_cast<const uint32_t*>(&lo);
    packed.y = *reinterpret_cast<const uint32_t*>(&hi);
    *reinterpret_cast<uint2*>(static_cast<__half*>(e.y) + at) = packed;
  } else {
    const uint32_t packed = (static_cast<uint32_t>(static_cast<int>(v0)) & 0xFFu) |
                            ((static_cast<uint32_t>(static_cast<int>(v1)) & 0xFFu) << 8) |
                            ((static_cast<uint32_t>(static_cast<int>(v2)) & 0xFFu) << 16) |
                            ((static_cast<uint32_t>(static_cast<int>(v3)) & 0xFFu) << 24);
    *reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(e.y) + at) = packed;
  }
}

// ---------------------------------------------------------------------------------------------
// The own kernel.

// The 4 dense int8 elements of one group: `pair` holds values[2g] (bits 0-7) and values[2g+1]
// (bits 8-15), `nibble` the group's indexes. Two values on one element add (SPEC's decoding), in int8.
__device__ __forceinline__ uint32_t DecodeGroupS8(uint32_t pair, uint32_t nibble) {
  const uint32_t p0 = nibble & 3u;
  uint32_t p1 = 1u + ((nibble >> 2) & 3u);
  p1 = p1 > 3u ? 3u : p1;  // an invalid index (3) must not shift out of the word
  const uint32_t v0 = pair & 0xFFu;
  const uint32_t v1 = (pair >> 8) & 0xFFu;
  if (p0 == p1) return ((v0 + v1) & 0xFFu) << (8u * p0);
  return (v0 << (8u * p0)) | (v1 << (8u * p1));
}

// The same decoding in two instructions for the kernel's inner loop: a byte permutation of the
// pair (bytes 0, 1: the values; bytes 2, 3: zero) and of the pair's sum (byte 4: v0 + v1, for a
// nibble that puts both values on one element), by the nibble's selector (SelectorOf).
__host__ __device__ constexpr uint32_t SelectorOf(uint32_t nibble) {
  const uint32_t p0 = nibble & 3u;
  const uint32_t p1 = 1u + ((nibble >> 2) & 3u) > 3u ? 3u : 1u + ((nibble >> 2) & 3u);
  const uint32_t zeros = 0x2222u;  // every output byte from byte 2 of the pair: 0
  if (p0 == p1) return (zeros & ~(0xFu << (4u * p0))) | (4u << (4u * p0));
  return (zeros & ~(0xFu << (4u * p0)) & ~(0xFu << (4u * p1))) | (1u << (4u * p1));
}
__device__ __forceinline__ uint32_t DecodeGroupPermute(uint32_t pair, uint32_t selector) {
  return __byte_perm(pair, pair + (pair >> 8), selector);
}

__device__ __forceinline__ void MmaS8(int32_t (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                      uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// A thread's 8 groups (c*32 + 8t .. +7) of one weight row: pairs[s] (16 bits each, two per word)
// and the nibbles (nibble s in bits 4s..4s+3).
template <bool kFull>
__device__ __forceinline__ void LoadWeight(const QGemmArgs& p, int64_t row, int64_t c, int t, int64_t ngroups,
                                           uint32_t (&words)[4], uint32_t& nibbles) {
  const int64_t half_k = p.k / 2;
  const int64_t stride = (p.k + 7) / 8;
  if (row >= p.n) {
    words[0] = words[1] = words[2] = words[3] = 0;
    nibbles = 0;
    return;
  }
  const int64_t g0 = c * 32 + 8 * t;
  if constexpr (kFull) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(p.values + row * half_k + 2 * g0));
    words[0] = v.x, words[1] = v.y, words[2] = v.z, words[3] = v.w;
    nibbles = __ldg(reinterpret_cast<const uint32_t*>(p.index + row * stride + g0 / 2));
  } else {
    words[0] = words[1] = words[2] = words[3] = 0;
    nibbles = 0;
    for (int s = 0; s < 8; ++s) {
      const int64_t g = g0 + s;
      if (g >= ngroups) break;
      const uint32_t lo = static_cast<uint8_t>(p.values[row * half_k + 2 * g]);
      const uint32_t hi = static_cast<uint8_t>(p.values[row * half_k + 2 * g + 1]);
      words[s >> 1] |= (lo | (hi << 8)) << (16 * (s & 1));
      const uint32_t byte = __ldg(p.index + row * stride + g / 2);
      nibbles |= ((g & 1) ? (byte >> 4) : (byte & 0xFu)) << (4 * s);
    }
  }
}

// The activations of the same 8 groups for one activation row: word s = the group's 4 bytes.
template <bool kFull>
__device__ __forceinline__ void LoadActivations(const QGemmArgs& p, int64_t row, int64_t c, int t, int64_t ngroups,
                                                uint32_t (&w)[8]) {
  const uint8_t* x = static_cast<const uint8_t*>(p.x);
  const int64_t g0 = c * 32 + 8 * t;
  if (row >= p.m) {
#pragma unroll
    for (int s = 0; s < 8; ++s) w[s] = 0;
    return;
  }
  if constexpr (kFull) {
    const uint4* src = reinterpret_cast<const uint4*>(x + row * p.k + 4 * g0);
    const uint4 a = __ldg(src);
    const uint4 b = __ldg(src + 1);
    w[0] = a.x, w[1] = a.y, w[2] = a.z, w[3] = a.w, w[4] = b.x, w[5] = b.y, w[6] = b.z, w[7] = b.w;
  } else {
#pragma unroll
    for (int s = 0; s < 8; ++s) {
      const int64_t g = g0 + s;
      w[s] = 0;
      if (g < ngroups) {
        const uint8_t* q = x + row * p.k + 4 * g;
        w[s] = static_cast<uint32_t>(q[0]) | (static_cast<uint32_t>(q[1]) << 8) | (static_cast<uint32_t>(q[2]) << 16) |
               (static_cast<uint32_t>(q[3]) << 24);
      }
    }
  }
}

// Block (blockIdx.x, blockIdx.y): weight rows 16 * blockIdx.x .. +15, activation rows
// 8 * kMTiles * blockIdx.y .. ; its 8 warps split K in chunks of 128 (32 groups) and are summed in
// shared memory, then the epilogue stores.
template <int kMTiles, bool kAligned, bool kUnsigned>
__global__ void __launch_bounds__(kWarps * 32) QGemmOwnKernel(QGemmArgs p) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * 16;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * (8 * kMTiles);
  const int64_t ngroups = p.k / 4;
  const int64_t nchunks = (ngroups + 31) / 32;
  constexpr uint32_t kFlip = kUnsigned ? 0x80808080u : 0u;  // uint8 -> A - 128 as int8
  __shared__ uint32_t selectors[16];  // by nibble (DecodeGroupPermute)
  if (threadIdx.x < 16) selectors[threadIdx.x] = SelectorOf(threadIdx.x);
  __syncthreads();

  int32_t acc[kMTiles][4];
#pragma unroll
  for (int i = 0; i < kMTiles; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0;

  // A chunk's weight (rows g and g+8) and activations, loaded before any of it is used, so that
  // several chunks' loads are in flight at once.
  struct Stage {
    uint32_t wa[4], wb[4], na, nb;
    uint32_t xw[kMTiles][8];
  };
  auto load = [&](int64_t c, Stage& st, auto full_tag) {
    constexpr bool kFull = decltype(full_tag)::value;
    LoadWeight<kFull>(p, r0 + g, c, t, ngroups, st.wa, st.na);
    LoadWeight<kFull>(p, r0 + g + 8, c, t, ngroups, st.wb, st.nb);
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) LoadActivations<kFull>(p, m0 + 8 * mt + g, c, t, ngroups, st.xw[mt]);
  };
  auto load_any = [&](int64_t c, Stage& st) {
    if (kAligned && c * 32 + 32 <= ngroups) load(c, st, std::true_type{});
    else load(c, st, std::false_type{});
  };
  auto compute = [&](const Stage& st) {
    const uint32_t(&wa)[4] = st.wa;
    const uint32_t(&wb)[4] = st.wb;
    const uint32_t na = st.na, nb = st.nb;
    const uint32_t(&xw)[kMTiles][8] = st.xw;
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      // Groups 2s (K slots 4t..4t+3) and 2s+1 (slots 16+4t..16+4t+3) of the thread's 8.
      const uint32_t a0 = DecodeGroupPermute(wa[s] & 0xFFFFu, selectors[(na >> (8 * s)) & 0xFu]);
      const uint32_t a2 = DecodeGroupPermute(wa[s] >> 16, selectors[(na >> (8 * s + 4)) & 0xFu]);
      const uint32_t a1 = DecodeGroupPermute(wb[s] & 0xFFFFu, selectors[(nb >> (8 * s)) & 0xFu]);
      const uint32_t a3 = DecodeGroupPermute(wb[s] >> 16, selectors[(nb >> (8 * s + 4)) & 0xFu]);
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        MmaS8(acc[mt], a0, a1, a2, a3, xw[mt][2 * s] ^ kFlip, xw[mt][2 * s + 1] ^ kFlip);
      }
    }
  };
  // Small M is bound by the weight's latency: up to 4 chunks' loads in flight per warp (2 for 4 tiles,
  // whose activations take the registers).
  constexpr int kStages = kMTiles <= 2 ? 4 : 2;
  Stage stages[kStages];
#pragma unroll 1
  for (int64_t c = warp; c < nchunks; c += kStages * kWarps) {
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      if (c + s * kWarps < nchunks) load_any(c + s * kWarps, stages[s]);
    }
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      if (c + s * kWarps < nchunks) compute(stages[s]);
    }
  }

  __shared__ int32_t partial[kWarps * kMTiles * 4 * 32];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int j = 0; j < 4; ++j) partial[(warp * kMTiles * 4 + mt * 4 + j) * 32 + lane] = acc[mt][j];
  __syncthreads();
  const int32_t zp = EffectiveZeroPoint(p.epi);
  const float zp_y = OutputZeroPoint(p.epi);
  for (int e = threadIdx.x; e < kMTiles * 4 * 32; e += kWarps * 32) {
    const int slot = e >> 5;
    const int ln = e & 31;
    int32_t sum = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += partial[(w * kMTiles * 4 + slot) * 32 + ln];
    const int mt = slot >> 2;
    const int j = slot & 3;
    const int64_t col = r0 + (ln >> 2) + (j >= 2 ? 8 : 0);
    const int64_t row = m0 + mt * 8 + 2 * (ln & 3) + (j & 1);
    if (col < p.n && row < p.m) StoreQ(p.epi, zp, zp_y, row, col, sum);
  }
}

template <int kMTiles>
void LaunchOwn(const QGemmArgs& args, bool aligned, cudaStream_t stream) {
  const dim3 grid(CeilDiv(args.n, 16), CeilDiv(args.m, 8 * kMTiles));
  BOOL_SWITCH(aligned, kAligned, [&] {
    BOOL_SWITCH(args.epi.a_unsigned, kUnsigned, [&] {
      QGemmOwnKernel<kMTiles, kAligned, kUnsigned><<<grid, kWarps * 32, 0, stream>>>(args);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// The passes around cuSPARSELt.

// Rows `slow` of the slow dimension, the fast one across threads: Y row-major [m, n] is stored with
// n fastest; an NCHW Y (hw > 0) with m fastest, so that the stores are coalesced.
template <bool kNchw>
__global__ void QEpilogueKernel(const int32_t* __restrict__ acc32, int64_t ldc, int64_t m, int64_t n, QEpilogue e) {
  const int32_t zp = EffectiveZeroPoint(e);
  const float zp_y = OutputZeroPoint(e);
  const int64_t slow_count = kNchw ? n : m;
  const int64_t fast_count = kNchw ? m : n;
  const int64_t fast = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (fast >= fast_count) return;
  for (int64_t slow = blockIdx.y; slow < slow_count; slow += gridDim.y) {
    const int64_t mi = kNchw ? fast : slow;
    const int64_t ni = kNchw ? slow : fast;
    StoreQ(e, zp, zp_y, mi, ni, acc32[mi * ldc + ni]);
  }
}

// Row-major Y, four columns a thread (n, ldc, ldy and the column offset multiples of 4, Y aligned).
__global__ void QEpilogueKernel4(const int32_t* __restrict__ acc32, int64_t ldc, int64_t m, int64_t n, QEpilogue e) {
  const int32_t zp = EffectiveZeroPoint(e);
  const float zp_y = OutputZeroPoint(e);
  const int64_t n4 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 4;
  if (n4 >= n) return;
  for (int64_t mi = blockIdx.y; mi < m; mi += gridDim.y) {
    StoreQ4(e, zp, zp_y, mi, n4, *reinterpret_cast<const int4*>(acc32 + mi * ldc + n4));
  }
}

__global__ void ColumnTermsKernel(QEpilogue e, int64_t n, int32_t* __restrict__ offset, float* __restrict__ scale) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t col = e.n_offset + i;
  offset[col] = ColumnOffset(e, EffectiveZeroPoint(e), col);
  scale[col] = ColumnScale(e, col);
}

__global__ void ScaledTermsKernel(QEpilogue e, int64_t n, float* __restrict__ alpha, float* __restrict__ bias) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t col = e.n_offset + i;
  const float multiplier = ColumnScale(e, col);
  const float zp_y = OutputZeroPoint(e) - (e.out_type == QOutType::kUint8 ? 128.f : 0.f);
  alpha[col] = multiplier;
  bias[col] = __fadd_rn(__fmul_rn(static_cast<float>(ColumnOffset(e, EffectiveZeroPoint(e), col)), multiplier), zp_y);
}

// out[0, total) from x[0, count) (flipped), zeros after it.
__global__ void ShiftKernel16(const uint4* __restrict__ x, int64_t count, int64_t total, uint32_t flip,
                              uint4* __restrict__ out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (i < count) {
      v = x[i];
      v.x ^= flip, v.y ^= flip, v.z ^= flip, v.w ^= flip;
    }
    out[i] = v;
  }
}

__global__ void ShiftKernel(const uint8_t* __restrict__ x, int64_t ldx, int64_t m, int64_t k, int64_t total,
                            uint8_t flip, uint8_t* __restrict__ out) {
  const int64_t count = m * k;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = i < count ? static_cast<uint8_t>(x[(i / k) * ldx + i % k] ^ flip) : uint8_t{0};
  }
}

// One warp per row.
__global__ void RowSumsKernel(const int8_t* __restrict__ values, const uint8_t* __restrict__ index, int64_t rows,
                              int64_t k, int32_t* __restrict__ wsum) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const int64_t ngroups = k / 4;
  int32_t sum = 0;
  for (int64_t g = lane; g < ngroups; g += 32) {
    const uint32_t pair = static_cast<uint8_t>(values[row * (k / 2) + 2 * g]) |
                          (static_cast<uint32_t>(static_cast<uint8_t>(values[row * (k / 2) + 2 * g + 1])) << 8);
    const uint32_t byte = index[row * ((k + 7) / 8) + g / 2];
    const uint32_t word = DecodeGroupS8(pair, (g & 1) ? (byte >> 4) : (byte & 0xFu));
#pragma unroll
    for (int b = 0; b < 4; ++b) sum += static_cast<int8_t>((word >> (8 * b)) & 0xFFu);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_down_sync(0xFFFFFFFFu, sum, offset);
  if (lane == 0) wsum[row] = sum;
}

__global__ void DecompressInt8Kernel(const int8_t* __restrict__ values, const uint8_t* __restrict__ index,
                                     int64_t rows, int64_t k, int8_t* __restrict__ dense) {
  const int64_t ngroups = k / 4;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * ngroups) return;
  const int64_t row = i / ngroups;
  const int64_t g = i % ngroups;
  const uint32_t pair = static_cast<uint8_t>(values[row * (k / 2) + 2 * g]) |
                        (static_cast<uint32_t>(static_cast<uint8_t>(values[row * (k / 2) + 2 * g + 1])) << 8);
  const uint32_t byte = index[row * ((k + 7) / 8) + g / 2];
  const uint32_t word = DecodeGroupS8(pair, (g & 1) ? (byte >> 4) : (byte & 0xFu));
  uint8_t* out = reinterpret_cast<uint8_t*>(dense) + row * k + 4 * g;
#pragma unroll
  for (int b = 0; b < 4; ++b) out[b] = static_cast<uint8_t>(word >> (8 * b));
}

// Row r (blockIdx.y, strided) = output pixel (b, oh, ow); column kk across threads.
__global__ void QIm2colKernel(const uint8_t* __restrict__ x, QIm2colArgs a, const uint8_t* pad_value,
                              uint8_t* __restrict__ col) {
  const int64_t kcols = a.kernel_h * a.kernel_w * a.group_channels;
  const int64_t kk = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (kk >= kcols) return;
  const uint8_t pad = pad_value != nullptr ? *pad_value : 0;
  const int64_t c = kk % a.group_channels;
  const int64_t kw = (kk / a.group_channels) % a.kernel_w;
  const int64_t kh = kk / (a.group_channels * a.kernel_w);
  const int64_t rows = a.batch * a.out_h * a.out_w;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const int64_t ow = r % a.out_w;
    const int64_t oh = (r / a.out_w) % a.out_h;
    const int64_t b = r / (a.out_w * a.out_h);
    const int64_t ih = oh * a.stride_h - a.pad_top + kh * a.dilation_h;
    const int64_t iw = ow * a.stride_w - a.pad_left + kw * a.dilation_w;
    uint8_t v = pad;
    if (ih >= 0 && ih < a.height && iw >= 0 && iw < a.width) {
      v = x[((b * a.channels + a.channel_offset + c) * a.height + ih) * a.width + iw];
    }
    col[r * kcols + kk] = v;
  }
}

unsigned int GridY(int64_t rows) { return static_cast<unsigned int>(rows < 65535 ? (rows > 0 ? rows : 1) : 65535); }

}  // namespace

cudaError_t LaunchQGemmOwn(const QGemmArgs& args, cudaStream_t stream) {
  if (args.m <= 0 || args.n <= 0) return cudaSuccess;
  const bool aligned = args.k % 32 == 0 && reinterpret_cast<uintptr_t>(args.values) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(args.index) % 4 == 0 &&
                       reinterpret_cast<uintptr_t>(args.x) % 16 == 0;
  if (args.m <= 8) LaunchOwn<1>(args, aligned, stream);
  else if (args.m <= 16) LaunchOwn<2>(args, aligned, stream);
  else LaunchOwn<4>(args, aligned, stream);
  return cudaGetLastError();
}

cudaError_t LaunchQEpilogue(const int32_t* acc32, int64_t ldc, int64_t m, int64_t n, const QEpilogue& epi,
                            cudaStream_t stream) {
  if (m <= 0 || n <= 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const size_t align = static_cast<size_t>(4 * QOutBytes(epi.out_type));
  const bool vec4 = epi.hw == 0 && n % 4 == 0 && ldc % 4 == 0 && epi.ldy % 4 == 0 && epi.n_offset % 4 == 0 &&
                    reinterpret_cast<uintptr_t>(epi.y) % align == 0 && reinterpret_cast<uintptr_t>(acc32) % 16 == 0;
  if (vec4) {
    const dim3 grid(CeilDiv(n / 4, kThreads), GridY(m));
    QEpilogueKernel4<<<grid, kThreads, 0, stream>>>(acc32, ldc, m, n, epi);
  } else if (epi.hw == 0) {
    const dim3 grid(CeilDiv(n, kThreads), GridY(m));
    QEpilogueKernel<false><<<grid, kThreads, 0, stream>>>(acc32, ldc, m, n, epi);
  } else {
    const dim3 grid(CeilDiv(m, kThreads), GridY(n));
    QEpilogueKernel<true><<<grid, kThreads, 0, stream>>>(acc32, ldc, m, n, epi);
  }
  return cudaGetLastError();
}

cudaError_t LaunchQColumnTerms(const QEpilogue& epi, int64_t n, int32_t* offset, float* scale, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  ColumnTermsKernel<<<CeilDiv(n, 256), 256, 0, stream>>>(epi, n, offset, scale);
  return cudaGetLastError();
}

cudaError_t LaunchQScaledTerms(const QEpilogue& epi, int64_t n, float* alpha, float* bias, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  ScaledTermsKernel<<<CeilDiv(n, 256), 256, 0, stream>>>(epi, n, alpha, bias);
  return cudaGetLastError();
}

cudaError_t LaunchShiftActivations(const void* x, int64_t ldx, int64_t m, int64_t k, bool a_unsigned, int8_t* out,
                                   cudaStream_t stream, int64_t zero_rows) {
  if (m + zero_rows <= 0 || k <= 0) return cudaSuccess;
  constexpr int kThreads = 256;
  const int64_t bytes = m * k, total = (m + zero_rows) * k;
  if (ldx == k && bytes % 16 == 0 && total % 16 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(out) % 16 == 0) {
    const int64_t count = total / 16;
    const unsigned int blocks = static_cast<unsigned int>(count / kThreads + 1 < 4096 ? count / kThreads + 1 : 4096);
    ShiftKernel16<<<blocks, kThreads, 0, stream>>>(static_cast<const uint4*>(x), bytes / 16, count,
                                                    a_unsigned ? 0x80808080u : 0u, reinterpret_cast<uint4*>(out));
  } else {
    const unsigned int blocks = static_cast<unsigned int>(total / kThreads + 1 < 4096 ? total / kThreads + 1 : 4096);
    ShiftKernel<<<blocks, kThreads, 0, stream>>>(static_cast<const uint8_t*>(x), ldx, m, k, total,
                                                  a_unsigned ? uint8_t{0x80} : uint8_t{0},
                                                  reinterpret_cast<uint8_t*>(out));
  }
  return cudaGetLastError();
}

cudaError_t LaunchWeightRowSums(const int8_t* values, const uint8_t* index, int64_t rows, int64_t k, int32_t* wsum,
                                cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  RowSumsKernel<<<CeilDiv(rows, 8), 256, 0, stream>>>(values, index, rows, k, wsum);
  return cudaGetLastError();
}

cudaError_t LaunchDecompressInt8(const int8_t* values, const uint8_t* index, int64_t rows, int64_t k, int8_t* dense,
                                 cudaStream_t stream) {
  const int64_t count = rows * (k / 4);
  if (count <= 0) return cudaSuccess;
  DecompressInt8Kernel<<<CeilDiv(count, 256), 256, 0, stream>>>(values, index, rows, k, dense);
  return cudaGetLastError();
}

cudaError_t LaunchQIm2col(const uint8_t* x, const QIm2colArgs& args, const uint8_t* pad_value, uint8_t* col,
                          cudaStream_t stream) {
  const int64_t kcols = args.kernel_h * args.kernel_w * args.group_channels;
  const int64_t rows = args.batch * args.out_h * args.out_w;
  if (kcols <= 0 || rows <= 0) return cudaSuccess;
  const dim3 grid(CeilDiv(kcols, 128), GridY(rows));
  QIm2colKernel<<<grid, 128, 0, stream>>>(x, args, pad_value, col);
  return cudaGetLastError();
}

}  // namespace onnxsparse::cuda
