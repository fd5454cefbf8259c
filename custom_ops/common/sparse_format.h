// SPEC's compressed 2:4 format, as kernels read it. A weight is a matrix [rows, K] (one row per
// output feature, K in reduction order); each group of 4 along K keeps two values:
//   values[r, 2g], values[r, 2g+1]   the kept elements (zero for an empty slot)
//   index[r, g / 2]                  a nibble per group: even g low nibble, odd g high nibble;
//                                    bits 0-1 index0 (0..2), bits 2-3 index1 (0..2)
// Decoding adds values[2g] at element index0 and values[2g+1] at element 1 + index1.
#pragma once
#include <cstdint>

namespace onnxsparse {

inline int64_t IndexBytesPerRow(int64_t k) { return (k + 7) / 8; }
inline int64_t ValuesPerRow(int64_t k) { return k / 2; }

// The nibble of group g in a row's index bytes.
inline uint8_t GroupNibble(const uint8_t* row_index, int64_t g) {
  const uint8_t byte = row_index[g >> 1];
  return (g & 1) ? static_cast<uint8_t>(byte >> 4) : static_cast<uint8_t>(byte & 0xF);
}

// Element offsets (0..3) inside the group of its two kept values.
inline int FirstOffset(uint8_t nibble) { return nibble & 0x3; }
inline int SecondOffset(uint8_t nibble) { return 1 + ((nibble >> 2) & 0x3); }

// A nibble whose 2-bit fields are both <= 2 (3 is not a valid index).
inline bool NibbleIsValid(uint8_t nibble) { return (nibble & 0x3) != 0x3 && (nibble & 0xC) != 0xC; }

}  // namespace onnxsparse
