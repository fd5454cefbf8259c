// Shape checks of SPEC's compressed pair (values [rows, K/2], index [rows, ceil(K/8)]), shared by
// the kernels that take one.
#pragma once
#include <cstdint>
#include <vector>

#include "common/sparse_format.h"
#include "common/status.h"

namespace onnxsparse::cpu {

struct CompressedWeightShape {
  int64_t rows = 0;  // output features: N or OC
  int64_t k = 0;     // reduction length, 2 * values.shape[1]
};

inline std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

inline Ort::Status CheckCompressedWeight(const char* op, const std::vector<int64_t>& values_shape,
                                         const std::vector<int64_t>& index_shape, CompressedWeightShape& out) {
  if (values_shape.size() != 2) {
    return InvalidArgument(op, "values must have rank 2 [rows, K/2], got shape " + ShapeString(values_shape));
  }
  if (index_shape.size() != 2) {
    return InvalidArgument(op, "index must have rank 2 [rows, ceil(K/8)], got shape " + ShapeString(index_shape));
  }
  out.rows = values_shape[0];
  out.k = 2 * values_shape[1];
  if (out.k % 4 != 0) {
    return InvalidArgument(op, StrCat("K=", out.k, " (2 * values.shape[1]) is not a multiple of 4"));
  }
  if (index_shape[0] != out.rows || index_shape[1] != IndexBytesPerRow(out.k)) {
    return InvalidArgument(op, StrCat("index has shape ", ShapeString(index_shape), ", expected [", out.rows, ", ",
                                      IndexBytesPerRow(out.k), "] for values of shape ", ShapeString(values_shape)));
  }
  return Ort::Status{nullptr};
}

}  // namespace onnxsparse::cpu
