// Launchers of the int8 sparse GEMM kernels of QMatMulCompress and QConv2dCompress (docs/ops.md,
// "int8 ops"). Host code includes this header only; the kernels are in qgemm_impl.cu.
//
// acc[m, n] = sum_k (A[m, k] - a_zero_point) * W[k, n] + bias[n], exact in int32, W the dense int8
// [k, n] matrix that SPEC's (values [n, k/2] int8, index [n, ceil(k/8)]) encode. A uint8 A is read
// as A - 128 (an int8: the byte XOR 0x80), so that the tensor cores' s8 x s8 product serves both
// activation types; the zero point is then corrected with the weight's row sums:
//   acc = sum_k A'[m, k] W[k, n] - zp' * wsum[n] + bias[n],  A' = A - 128, zp' = zp - 128 (uint8)
//                                                            A' = A,       zp' = zp       (int8)
// The epilogue turns acc into Y exactly as the contract says: float(acc) * (a_scale * w_scale[n])
// (float output; the fp16 form rounds it to fp16, a_scale then being float16), or saturate(round_half_to_even(float(acc) * m[n]) + y_zero_point) with
// m[n] = a_scale * w_scale[n] / y_scale (quantized output), Relu before the quantization. The
// scales and zero points are read on the device (they may be computed by the model), so nothing
// is copied to the host per call and CUDA graphs capture the op.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace onnxsparse::cuda {

// kHalf: the float value rounded to fp16 (the fp16 form, whose a_scale is float16).
enum class QOutType : int { kFloat = 0, kUint8 = 1, kInt8 = 2, kHalf = 3 };

// Bytes of one output element.
constexpr int QOutBytes(QOutType t) { return t == QOutType::kFloat ? 4 : t == QOutType::kHalf ? 2 : 1; }
// The output is not quantized (float or fp16).
constexpr bool QOutIsFloat(QOutType t) { return t == QOutType::kFloat || t == QOutType::kHalf; }

// What turns an int32 accumulator into one output element. Pointers are device pointers.
struct QEpilogue {
  const int32_t* wsum = nullptr;        // [n]: sum over k of the decoded weight row
  const void* a_zero_point = nullptr;   // scalar of A's type, or null (0)
  bool a_unsigned = false;              // A is uint8 (the GEMM read A - 128)
  const void* a_scale = nullptr;        // scalar: float, or float16 in the fp16 form (out_type kHalf)
  const float* w_scale = nullptr;       // [n] (w_per_channel) or a scalar
  bool w_per_channel = false;
  const int32_t* bias = nullptr;        // [n] or null
  const float* y_scale = nullptr;       // scalar; null for a float output
  const void* y_zero_point = nullptr;   // scalar of Y's type, or null (0)
  QOutType out_type = QOutType::kFloat;
  bool relu = false;
  void* y = nullptr;                    // Y, at row 0 and column 0 of the whole op's output
  int64_t ldy = 0;                      // elements per row of Y [m, ldy] (hw == 0), or channels (hw > 0)
  int64_t hw = 0;                       // > 0: Y is NCHW [m / hw, ldy, hw] (Conv), row m = image pixel
  int64_t n_offset = 0;                 // this GEMM's first output column (Conv's group): scales, bias
                                        // and wsum are indexed from it
  int64_t m_offset = 0;                 // this GEMM's first output row
  // Per-column terms computed beforehand by LaunchQColumnTerms (or null: computed per element):
  // col_offset[col] = bias[col] - zp' * wsum[col] (int32, wrap-around), col_scale[col] = a_scale *
  // w_scale[col] (float output) or that / y_scale (quantized), each rounded to fp32 as the contract says.
  const int32_t* col_offset = nullptr;
  const float* col_scale = nullptr;
};

// One int8 GEMM: x [m, k] (row stride k; uint8 or int8 as epi.a_unsigned says), the weight rows
// (values, index) of n output features, and the epilogue.
struct QGemmArgs {
  const void* x = nullptr;
  int64_t m = 0, k = 0, n = 0;
  const int8_t* values = nullptr;   // [n, k/2]
  const uint8_t* index = nullptr;   // [n, ceil(k/8)]
  QEpilogue epi;
};

// The own kernel: the weight read in SPEC's form and decoded in registers into the A fragments of
// the int8 tensor-core MMA (mma.sync m16n8k32 s8, sm_80+), activations as its B, int32
// accumulation, the epilogue fused into the store. Any m, k (k % 4 == 0), n.
cudaError_t LaunchQGemmOwn(const QGemmArgs& args, cudaStream_t stream);

// The epilogue alone, for a product computed elsewhere (cuSPARSELt): acc32 [m, n] with row stride
// ldc holds sum_k A'[m, k] W[k, n].
cudaError_t LaunchQEpilogue(const int32_t* acc32, int64_t ldc, int64_t m, int64_t n, const QEpilogue& epi,
                            cudaStream_t stream);

// The per-column terms of columns [epi.n_offset, epi.n_offset + n) into offset[] and scale[]
// (indexed by column, n_offset included): one small pass, so that the epilogue after cuSPARSELt
// does an add, a multiply, the rounding and the store per element.
cudaError_t LaunchQColumnTerms(const QEpilogue& epi, int64_t n, int32_t* offset, float* scale, cudaStream_t stream);

// The terms of cuSPARSELt's scaled output, per column c of [epi.n_offset, epi.n_offset + n):
// alpha[c] = the multiplier m[c] and bias[c] = m[c] * offset[c] + y_zero_point (uint8 Y:
// y_zero_point - 128, the output then read back as Y - 128 flipped by XOR 0x80; float Y: no zero
// point), so that alpha * raw + bias, saturated to int8 and rounded when quantized, is the output:
// one rounding of a float sum that the contract computes as float(raw + offset) * m (docs/ops.md:
// within one step at rounding ties).
cudaError_t LaunchQScaledTerms(const QEpilogue& epi, int64_t n, float* alpha, float* bias, cudaStream_t stream);

// out [m, k] int8 = x [m, k] (row stride ldx) read as A' (uint8: XOR 0x80; int8: copied), then
// zero_rows rows of zeros (cuSPARSELt's padding rows below 32).
cudaError_t LaunchShiftActivations(const void* x, int64_t ldx, int64_t m, int64_t k, bool a_unsigned, int8_t* out,
                                   cudaStream_t stream, int64_t zero_rows = 0);

// wsum[r] = sum of the decoded row r of (values, index), r < rows (int32, exact).
cudaError_t LaunchWeightRowSums(const int8_t* values, const uint8_t* index, int64_t rows, int64_t k, int32_t* wsum,
                                cudaStream_t stream);

// dense [rows, k] int8 = the matrix (values, index) encode (cuSPARSELt's input).
cudaError_t LaunchDecompressInt8(const int8_t* values, const uint8_t* index, int64_t rows, int64_t k, int8_t* dense,
                                 cudaStream_t stream);

// QConv2dCompress's im2col on NCHW uint8/int8 input (one byte per element): col[(b*OH + oh)*OW + ow,
// (kh*KW + kw)*Cg + c] = x[b, channel_offset + c, ih, iw], or pad_value outside the image (the
// activation's zero point, read on the device; null: 0).
struct QIm2colArgs {
  int64_t batch = 0, channels = 0, height = 0, width = 0;
  int64_t channel_offset = 0, group_channels = 0;
  int64_t kernel_h = 0, kernel_w = 0, stride_h = 1, stride_w = 1;
  int64_t pad_top = 0, pad_left = 0, dilation_h = 1, dilation_w = 1;
  int64_t out_h = 0, out_w = 0;
};
cudaError_t LaunchQIm2col(const uint8_t* x, const QIm2colArgs& args, const uint8_t* pad_value, uint8_t* col,
                          cudaStream_t stream);

}  // namespace onnxsparse::cuda
