#include "cpu/compress_op.h"

#include <vector>

#include "common/float_convert.h"
#include "common/op_shapes.h"
#include "common/sparse_format.h"
#include "common/status.h"

namespace onnxsparse {
// CompressOp also takes an int8 weight (the int8 ops' values, docs/ops.md): zero is the integer 0.
inline float ToFloat(int8_t v) { return static_cast<float>(v); }
}  // namespace onnxsparse

namespace onnxsparse::cpu {

namespace {

// Where element kk of row r of the [rows, K] view lies in the weight's own layout.
struct RowKView {
  WeightLayout layout;
  int64_t rows = 0, k = 0;
  int64_t n = 0;                           // kn: N
  int64_t channels = 0, kh = 0, kw = 0;    // oihw: C/group, KH, KW

  int64_t Offset(int64_t r, int64_t kk) const {
    switch (layout) {
      case WeightLayout::kKN: return kk * n + r;
      case WeightLayout::kNK: return r * k + kk;
      case WeightLayout::kOIHW: {
        // kk runs over (kh, kw, c); the weight is [OC, C, KH, KW].
        const int64_t c = kk % channels;
        const int64_t tap = kk / channels;  // kh * KW + kw
        return (r * channels + c) * kh * kw + tap;
      }
    }
    return 0;
  }
};

}  // namespace

template <typename T>
CompressOpKernel<T>::CompressOpKernel(const OrtApi* /*api*/, const OrtKernelInfo* info) noexcept {
  init_error_ = CaptureInitError([&] { return ReadWeightLayout(info, layout_); });
}

template <typename T>
Ort::Status CompressOpKernel<T>::Compute(const Ort::Custom::Tensor<T>& weight, Ort::Custom::Tensor<T>& values,
                                         Ort::Custom::Tensor<uint8_t>& index) {
  return GuardCompute(kOpName, [&]() -> Ort::Status {
    if (!init_error_.empty()) return InvalidArgument(kOpName, init_error_);
    return ComputeImpl(weight, values, index);
  });
}

template <typename T>
Ort::Status CompressOpKernel<T>::ComputeImpl(const Ort::Custom::Tensor<T>& weight, Ort::Custom::Tensor<T>& values,
                                             Ort::Custom::Tensor<uint8_t>& index) {
  CompressShape shape;
  ONNXSPARSE_RETURN_IF_ERROR(ResolveCompressShape(kOpName, layout_, weight.Shape(), shape));
  RowKView view{layout_};
  view.rows = shape.rows;
  view.k = shape.k;
  view.n = shape.rows;  // kn: W is [K, N]
  view.channels = shape.channels;
  view.kh = shape.kernel_h;
  view.kw = shape.kernel_w;

  const int64_t groups = view.k / 4;
  const int64_t values_per_row = ValuesPerRow(view.k);
  const int64_t index_per_row = IndexBytesPerRow(view.k);
  T* values_out = values.Allocate({view.rows, values_per_row});
  uint8_t* index_out = index.Allocate({view.rows, index_per_row});
  const T* w = weight.Data();
  const T zero = FromFloat<T>(0.0f);  // +0: an empty slot stores zero, whatever the sign of the input's zeros
  int64_t bad_groups = 0;

  for (int64_t r = 0; r < view.rows; ++r) {
    T* row_values = values_out + r * values_per_row;
    uint8_t* row_index = index_out + r * index_per_row;
    for (int64_t b = 0; b < index_per_row; ++b) row_index[b] = 0;  // also the spare nibble
    for (int64_t g = 0; g < groups; ++g) {
      T e[4];
      bool nz[4];
      int count = 0;
      for (int j = 0; j < 4; ++j) {
        e[j] = w[view.Offset(r, 4 * g + j)];
        nz[j] = ToFloat(e[j]) != 0.0f;  // -0.0 counts as zero; NaN as non-zero
        count += nz[j];
      }
      if (count > 2) ++bad_groups;
      // index0: the first non-zero among elements 0..2.
      int first = 0;
      bool has_first = false;
      for (int j = 0; j < 3 && !has_first; ++j) {
        if (nz[j]) first = j, has_first = true;
      }
      // index1: the last non-zero among elements 1..3 that index0 did not take.
      int second = 0;
      bool has_second = false;
      for (int j = 3; j >= 1 && !has_second; --j) {
        if (nz[j] && !(has_first && j == first)) second = j - 1, has_second = true;
      }
      row_values[2 * g] = has_first ? e[first] : zero;
      row_values[2 * g + 1] = has_second ? e[second + 1] : zero;
      const uint8_t nibble = static_cast<uint8_t>(first | (second << 2));
      row_index[g >> 1] |= static_cast<uint8_t>((g & 1) ? nibble << 4 : nibble);
    }
  }
  if (bad_groups > 0) {
    return InvalidArgument(kOpName, StrCat("the weight is not 2:4 sparse: ", bad_groups, " of ", view.rows * groups,
                                           " groups have more than 2 non-zeros"));
  }
  return Ort::Status{nullptr};
}

template struct CompressOpKernel<float>;
template struct CompressOpKernel<Ort::Float16_t>;
template struct CompressOpKernel<Ort::BFloat16_t>;
template struct CompressOpKernel<int8_t>;

}  // namespace onnxsparse::cpu
