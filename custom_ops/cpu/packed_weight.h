// The fast kernels' layout of a 2:4 weight, built once when a kernel is created from SPEC's
// compressed pair (values [rows, K/2], index [rows, ceil(K/8)]) when both are constant.
//
// Output features are taken 16 at a time (a *block*: one AVX-512 register, two AVX2 registers);
// inside a block, group after group along K, each group is one *record*:
//
//   v0[16]   the first kept value of the group for each of the 16 features   (fp32, or fp16 bits)
//   v1[16]   the second kept value                                           (same)
//   sel[16]  one byte per feature: index0 | (1 + index1) << 2  (= SPEC nibble + 4)
//
// so a record is 144 bytes for fp32 (9 bytes per group and feature against 16 for a dense weight),
// 80 for fp16. sel is chosen so that, with the group's 4 inputs broadcast to every 128-bit lane
// (lane j holds element j % 4), a lane permute by sel selects element index0 and one by sel >> 2
// selects element 1 + index1: _mm512_permutexvar_ps reads the low 4 bits, _mm256_permutevar8x32_ps
// the low 3. Features past the last one (rows not a multiple of 16) hold zeros and sel = 4.
// Blocks are stored in pairs (32 features, the register tile of the Rows kernel), the records of
// the pair interleaved group by group, so that a pair is one sequential stream: the record of
// (b, g) is at ((b / 2) * groups + g) * 2 * record_bytes + (b % 2) * record_bytes. An odd last
// block is paired with a block of zeros.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <memory>

namespace onnxsparse::cpu {

constexpr int64_t kBlockN = 16;

struct PackedWeight {
  int64_t rows = 0;    // output features N (or OC)
  int64_t k = 0;       // reduction length
  int64_t groups = 0;  // k / 4
  int64_t blocks = 0;  // ceil(rows / 16)
  bool fp16 = false;   // values stored as IEEE half (converted on load), else fp32
  int64_t value_bytes = 4;
  int64_t record_bytes = 0;  // 32 * value_bytes + 16
  int64_t group_stride = 0;  // bytes from a block's record of group g to that of g + 1: 2 * record_bytes

  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t, Free> data;
  const uint8_t* base = nullptr;  // data.get(), as a plain field for the ISA files (see below)
};

// The record of (block, group). The ISA files (compiled with -mavx512f or -mavx2) use only this
// header's plain fields and functions of their own anonymous namespace, never an inline function
// shared with baseline code: the linker could otherwise keep their AVX copy of it for everyone.
#define ONNXSPARSE_RECORD(w, block, group) \
  ((w).base + (((block) >> 1) * (w).groups + (group)) * (w).group_stride + ((block) & 1) * (w).record_bytes)

// Builds the packed layout of a weight whose values are fp32 (value_kind 0), IEEE fp16 bits
// (1, kept as fp16) or bfloat16 bits (2, widened to fp32). Returns null when an index nibble holds
// the invalid field 3 (the generic kernel then reports it on every call) or on allocation failure.
std::unique_ptr<PackedWeight> PackWeight(const void* values, int value_kind, const uint8_t* index, int64_t rows,
                                         int64_t k);

}  // namespace onnxsparse::cpu
