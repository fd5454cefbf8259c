// The register-pipeline kernels (GemmVariant::kRegisterPipeline and kRegisterPipelineRemapped):
// fp16 and bf16, any K. Instantiated per element type in registers_fp16.cu and registers_bf16.cu.
#pragma once
#include "cuda/sparse_gemm/launchers.h"
#include "cuda/sparse_gemm/mma_common.cuh"
#include "cuda/static_switch.h"

namespace onnxsparse::cuda::detail {

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

template <typename T, int kMTiles>
cudaError_t LaunchRegisterGemm(const SparseGemmArgs& args, bool remap, cudaStream_t stream) {
  // 16-byte loads of values and activations need K % 32 == 0 (row starts aligned); the other
  // shapes take the per-group path.
  const bool aligned = args.k % 32 == 0 && reinterpret_cast<uintptr_t>(args.values) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(args.x) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(args.index) % 4 == 0;
  BOOL_SWITCH(aligned, kAligned, [&] {
    const dim3 grid(CeilDiv(args.n, 16), CeilDiv(args.m, 8 * kMTiles));
    if (!remap) SparseGemmMmaKernel<T, kMTiles, kAligned, false><<<grid, kGemmWarps * 32, 0, stream>>>(args);
    else SparseGemmMmaKernel<T, kMTiles, kAligned, true><<<grid, kGemmWarps * 32, 0, stream>>>(args);
  });
  return cudaGetLastError();
}

}  // namespace onnxsparse::cuda::detail

#define ONNXSPARSE_INSTANTIATE_REGISTER_GEMM(T) \
  template cudaError_t onnxsparse::cuda::detail::LaunchRegisterGemm<T, 1>( \
      const onnxsparse::cuda::SparseGemmArgs&, bool, cudaStream_t); \
  template cudaError_t onnxsparse::cuda::detail::LaunchRegisterGemm<T, 2>( \
      const onnxsparse::cuda::SparseGemmArgs&, bool, cudaStream_t); \
  template cudaError_t onnxsparse::cuda::detail::LaunchRegisterGemm<T, 4>( \
      const onnxsparse::cuda::SparseGemmArgs&, bool, cudaStream_t);
