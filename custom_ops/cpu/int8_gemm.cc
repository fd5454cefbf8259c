#include "cpu/int8_gemm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>
#include <type_traits>
#include <vector>

#include "common/sparse_format.h"
#include "common/status.h"
#include "cpu/parallel.h"

namespace onnxsparse::cpu {

namespace {

constexpr int64_t kRowsPerTask = 64;  // rows of A per task: their A_u rows stay in L1/L2 over a block's pairs

// The epilogue on one tile: C rows i < m, features [n0, n0 + count) of the weight, into Y rows i at
// y + i * stride_m with features stride_n apart (1: in place; else through a row buffer).
void StoreTile(const Int8KernelSet& kernels, const int32_t* c, int64_t ldc, int64_t m, int64_t n0, int64_t count,
               const Int8Epilogue& ep, uint8_t* y, int64_t stride_m, int64_t stride_n, int64_t out_bytes) {
  thread_local std::vector<uint8_t> row;
  if (stride_n != 1 && static_cast<int64_t>(row.size()) < count * out_bytes) {
    row.resize(static_cast<size_t>(count * out_bytes));
  }
  for (int64_t i = 0; i < m; ++i) {
    uint8_t* out = y + i * stride_m * out_bytes;
    if (stride_n == 1) {
      kernels.epilogue(c + i * ldc, count, ep, n0, out);
      continue;
    }
    kernels.epilogue(c + i * ldc, count, ep, n0, row.data());
    for (int64_t j = 0; j < count; ++j) {
      std::memcpy(out + j * stride_n * out_bytes, row.data() + j * out_bytes, static_cast<size_t>(out_bytes));
    }
  }
}

int32_t* TileScratch(int64_t count) {
  thread_local std::vector<int32_t> buffer;
  if (static_cast<int64_t>(buffer.size()) < count) buffer.resize(static_cast<size_t>(count));
  return buffer.data();
}



}  // namespace

std::unique_ptr<Int8PackedWeight> PackInt8Weight(const int8_t* values, const uint8_t* index, int64_t rows, int64_t k,
                                                 int64_t conv_groups, Int8Format format, std::string& error) {
  if (conv_groups <= 0 || rows % conv_groups != 0) {
    error = StrCat("OC=", rows, " is not divisible by group=", conv_groups);
    return nullptr;
  }
  auto packed = std::make_unique<Int8PackedWeight>();
  Int8PackedWeight& w = *packed;
  w.rows = rows;
  w.k = k;
  w.pairs = (k / 4 + 1) / 2;
  w.conv_groups = conv_groups;
  w.format = format;
  w.rows_per_group = rows / conv_groups;
  w.blocks_per_group = (w.rows_per_group + kInt8BlockN - 1) / kInt8BlockN;
  w.blocks = w.blocks_per_group * conv_groups;
  w.index_offset = w.pairs * 4 * kInt8BlockN;
  w.block_stride = (w.pairs * kInt8PairBytes + 63) / 64 * 64;
  const size_t bytes = static_cast<size_t>(std::max<int64_t>(w.blocks * w.block_stride, 64));
  w.data.reset(static_cast<uint8_t*>(std::aligned_alloc(64, bytes)));
  if (!w.data) throw std::bad_alloc();
  std::memset(w.data.get(), 0, bytes);
  w.base = w.data.get();
  w.row_sums.reset(new int32_t[static_cast<size_t>(std::max<int64_t>(rows, 1))]());

  const int64_t groups = k / 4;
  const int64_t values_per_row = ValuesPerRow(k);
  const int64_t index_per_row = IndexBytesPerRow(k);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t cg = r / w.rows_per_group;
    const int64_t local = r % w.rows_per_group;
    const int64_t block = cg * w.blocks_per_group + local / kInt8BlockN;
    const int64_t lane = local % kInt8BlockN;
    uint8_t* block_values = const_cast<uint8_t*>(ONNXSPARSE_INT8_VALUES(w, block));
    uint8_t* block_index = const_cast<uint8_t*>(ONNXSPARSE_INT8_INDEX(w, block));
    const int8_t* row_values = values + r * values_per_row;
    const uint8_t* row_index = index + r * index_per_row;
    int32_t sum = 0;
    for (int64_t g = 0; g < groups; ++g) {
      const uint8_t nibble = GroupNibble(row_index, g);
      if (!NibbleIsValid(nibble)) {
        error = StrCat("index of row ", r, ", group ", g, " holds the invalid field 3 (nibble ", int{nibble}, ")");
        return nullptr;
      }
      const int64_t pair = g / 2, half = g % 2;
      int first = FirstOffset(nibble), second = SecondOffset(nibble);
      int8_t v0 = row_values[2 * g], v1 = row_values[2 * g + 1];
      int8_t* dst = nullptr;
      uint8_t field = 0;
      if (format == Int8Format::kPositions) {
        field = static_cast<uint8_t>(first | second << 2);
        dst = reinterpret_cast<int8_t*>(block_values + (pair * kInt8BlockN + lane) * 4 + 2 * half);
      } else {
        if (first > second) std::swap(first, second), std::swap(v0, v1);
        int code = 0;
        while (kInt8CodeFirst[code] != first || kInt8CodeSecond[code] != second) ++code;  // every (first <= second) has a code
        field = static_cast<uint8_t>(code);
        const int64_t octet = lane / 8;
        dst = reinterpret_cast<int8_t*>(block_values + pair * 64 + octet * 32 + (lane % 8) * 4 + half);
      }
      block_index[pair * kInt8BlockN + lane] |= static_cast<uint8_t>(field << (4 * half));
      dst[0] = v0;
      dst[format == Int8Format::kPositions ? 1 : 2] = v1;
      sum += v0 + v1;
    }
    w.row_sums[r] = sum;
  }
  if (format == Int8Format::kCodes) {
    // Words of a slot's two values (int8_kernels.h): bytes 2j and 2j + 1 of the values.
    const int8_t* v = reinterpret_cast<const int8_t*>(w.base);
    bool fit = true;
    for (int64_t b = 0; b < w.blocks && fit; ++b) {
      const int8_t* block = v + b * w.block_stride;
      for (int64_t j = 0; j < w.pairs * 64; j += 2) {
        if (std::abs(int{block[j]}) + std::abs(int{block[j + 1]}) > 128) {
          fit = false;
          break;
        }
      }
    }
    w.byte_pairs_fit = fit;
  }
  return packed;
}

const Int8KernelSet& Int8Kernels(CpuIsa isa) {
  static const bool vnni = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi");
  switch (isa) {
    case CpuIsa::kAvx512: return vnni ? kInt8KernelsAvx512 : kInt8KernelsAvx2;
    case CpuIsa::kAvx2: return kInt8KernelsAvx2;
    case CpuIsa::kPortable: break;
  }
  return kInt8KernelsPortable;
}

void PrepareInt8Rows(const uint8_t* a, int64_t m, int64_t k, bool flip, uint8_t* dst, int64_t lda) {
  for (int64_t i = 0; i < m; ++i) {
    const uint8_t* src = a + i * k;
    uint8_t* out = dst + i * lda;
    if (flip) {
      for (int64_t j = 0; j < k; ++j) out[j] = static_cast<uint8_t>(src[j] ^ 0x80u);
    } else {
      std::memcpy(out, src, static_cast<size_t>(k));
    }
    std::memset(out + k, 0, static_cast<size_t>(lda - k));
  }
}

bool RunInt8Gemm(OrtKernelContext* context, const Int8KernelSet& kernels, const Int8PackedWeight& w, int64_t group,
                 const uint8_t* a, int64_t lda, int64_t m, const Int8Epilogue& epilogue, void* y, int64_t stride_m,
                 int64_t stride_n) {
  if (m <= 0 || w.rows_per_group <= 0) return true;
  const int64_t row_chunks = (m + kRowsPerTask - 1) / kRowsPerTask;
  const int64_t blocks = w.blocks_per_group;
  // About 32 tasks (threads even out), each an even number of blocks (the AVX-512 tile is 2 blocks).
  int64_t per_task = (blocks * row_chunks + 31) / 32;
  per_task = std::min(blocks, std::max<int64_t>(2, (per_task + 1) / 2 * 2));
  const int64_t block_chunks = (blocks + per_task - 1) / per_task;
  const int64_t first_block = group * blocks;
  const int64_t first_row = group * w.rows_per_group;
  const size_t out_bytes = static_cast<size_t>(Int8OutBytes(epilogue.out));

  return ParallelItems(context, row_chunks * block_chunks, [&](int64_t item) {
    const int64_t rc = item / block_chunks, bc = item % block_chunks;
    const int64_t i0 = rc * kRowsPerTask, rows = std::min(kRowsPerTask, m - i0);
    const int64_t b0 = bc * per_task, b1 = std::min(blocks, b0 + per_task);
    Int8Task task;
    task.a = a + i0 * lda;
    task.lda = lda;
    task.m = rows;
    task.block_begin = first_block + b0;
    task.block_end = first_block + b1;
    task.ldc = (b1 - b0) * kInt8BlockN;
    task.c = TileScratch(rows * task.ldc);
    kernels.gemm(w, task);
    const int64_t n0 = b0 * kInt8BlockN;
    const int64_t count = std::min(w.rows_per_group, b1 * kInt8BlockN) - n0;
    uint8_t* out = static_cast<uint8_t*>(y) + (i0 * stride_m + n0 * stride_n) * static_cast<int64_t>(out_bytes);
    StoreTile(kernels, task.c, task.ldc, rows, first_row + n0, count, epilogue, out, stride_m, stride_n,
              static_cast<int64_t>(out_bytes));
  });
}

}  // namespace onnxsparse::cpu
