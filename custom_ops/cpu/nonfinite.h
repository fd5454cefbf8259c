// NaN and infinity in the activations (docs/semantics.md): the sparse product skips the weights
// that 2:4 pruning removed, but the dense op multiplies them, and 0 * NaN = 0 * Inf = NaN. So that
// a compiled model's non-finite outputs are exactly the original's, each op scans its activations
// once after the product (O(M*K) against the product's O(M*K*N), a vectorised test of the exponent
// bits) and, only when the scan finds a NaN or an infinity, sets to NaN the outputs to which the
// dense op adds 0 * (that value): those whose weight element at the value's reduction position is
// not one of the two that the index selects in its group. Everything else the sparse product
// already computes as the dense one does (NaN and Inf times kept values, stored zeros included).
// The weight's own NaN/Inf are kept values and need nothing. Runs after a successful product only
// (the index is then valid).
#pragma once
#include <cstdint>

#include "common/op_shapes.h"

namespace onnxsparse::cpu {

// True when any of the count values is NaN or +-Inf. T: float, Ort::Float16_t, Ort::BFloat16_t.
template <typename T>
bool AnyNonFinite(const T* data, int64_t count);

// MatMulCompress: A[i, kk] at a[i * row_stride + kk * col_stride] for i < m, kk < k; index is
// SPEC's [n, ceil(k/8)]; Y [m, n] row-major.
template <typename T>
void PropagateNonFiniteMatMul(const T* a, int64_t m, int64_t k, int64_t row_stride, int64_t col_stride,
                              const uint8_t* index, int64_t n, T* y);

// Conv2dCompress: X [N, C, H, W], index [OC, ceil(K/8)] with K in (kh, kw, c) order, Y [N, OC, OH, OW].
template <typename T>
void PropagateNonFiniteConv(const T* x, const ConvAttributes& attrs, const ConvGeometry& geo, const uint8_t* index,
                            T* y);

}  // namespace onnxsparse::cpu
