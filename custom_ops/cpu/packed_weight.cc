#include "cpu/packed_weight.h"

#include <cstring>
#include <new>

#include "common/sparse_format.h"

namespace onnxsparse::cpu {

namespace {

float Bf16ToFloat(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float out;
  std::memcpy(&out, &wide, sizeof(out));
  return out;
}

}  // namespace

std::unique_ptr<PackedWeight> PackWeight(const void* values, int value_kind, const uint8_t* index, int64_t rows,
                                         int64_t k) {
  auto packed = std::make_unique<PackedWeight>();
  PackedWeight& w = *packed;
  w.rows = rows;
  w.k = k;
  w.groups = k / 4;
  w.blocks = (rows + kBlockN - 1) / kBlockN;
  w.fp16 = value_kind == 1;
  w.value_bytes = w.fp16 ? 2 : 4;
  w.record_bytes = 2 * kBlockN * w.value_bytes + kBlockN;
  w.group_stride = 2 * w.record_bytes;
  const int64_t pairs = (w.blocks + 1) / 2;
  const size_t bytes = static_cast<size_t>(pairs * w.groups * w.group_stride);
  const size_t rounded = (bytes + 63) / 64 * 64 + 64;  // aligned_alloc wants a multiple of the alignment
  w.data.reset(static_cast<uint8_t*>(std::aligned_alloc(64, rounded)));
  if (!w.data) return nullptr;
  std::memset(w.data.get(), 0, rounded);
  w.base = w.data.get();

  const int64_t values_per_row = ValuesPerRow(k);
  const int64_t index_per_row = IndexBytesPerRow(k);
  for (int64_t b = 0; b < 2 * pairs; ++b) {
    for (int64_t g = 0; g < w.groups; ++g) {
      uint8_t* record = const_cast<uint8_t*>(ONNXSPARSE_RECORD(w, b, g));
      uint8_t* sel = record + 2 * kBlockN * w.value_bytes;
      for (int64_t lane = 0; lane < kBlockN; ++lane) {
        const int64_t n = b * kBlockN + lane;
        if (n >= rows) {
          sel[lane] = 4;  // index0 = 0, index1 = 0 over zero values
          continue;
        }
        const uint8_t nibble = GroupNibble(index + n * index_per_row, g);
        if (!NibbleIsValid(nibble)) return nullptr;
        sel[lane] = static_cast<uint8_t>(nibble + 4);
        const int64_t at = n * values_per_row + 2 * g;
        for (int slot = 0; slot < 2; ++slot) {
          uint8_t* dst = record + (slot * kBlockN + lane) * w.value_bytes;
          if (value_kind == 0) {
            std::memcpy(dst, static_cast<const float*>(values) + at + slot, 4);
          } else if (value_kind == 1) {
            std::memcpy(dst, static_cast<const uint16_t*>(values) + at + slot, 2);
          } else {
            const float wide = Bf16ToFloat(static_cast<const uint16_t*>(values)[at + slot]);
            std::memcpy(dst, &wide, 4);
          }
        }
      }
    }
  }
  return packed;
}

}  // namespace onnxsparse::cpu
