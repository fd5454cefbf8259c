// The packed weight (fp16/bf16): SPEC's form re-laid out once, at the first call of a constant
// weight, as the registers and metadata of the sparse tensor-core MMA (see kPackedTileBytes), so
// that the kAsyncRingPacked kernel copies one contiguous tile per stage and decodes nothing.
#include "cuda/sparse_gemm/mma_common.cuh"

namespace onnxsparse::cuda {
namespace detail {

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

}  // namespace detail

using detail::kPackedTileBytes;

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
  detail::PackWeightKernel<T><<<CeilDiv(pieces, 256), 256, 0, stream>>>(static_cast<const uint16_t*>(values), index,
                                                                       n, k, pieces, static_cast<uint4*>(packed));
  return cudaGetLastError();
}

template cudaError_t LaunchPackWeight<__half>(const void*, const uint8_t*, int64_t, int64_t, void*, cudaStream_t);
template cudaError_t LaunchPackWeight<__nv_bfloat16>(const void*, const uint8_t*, int64_t, int64_t, void*,
                                                     cudaStream_t);

}  // namespace onnxsparse::cuda
