// Conv2dCompress on CUDA: ONNX Conv (NCHW) with SPEC's compressed weight, by one of two forms:
//   NHWC (any dtype, group, weight): NCHW -> NHWC transpose, im2col in (kh, kw, c) order, the sparse
//     GEMM per group into NHWC (SparseGemmRunner: own kernel or cuSPARSELt), and an NHWC -> NCHW
//     transpose with the bias fused;
//   per image (fp16/bf16, group 1, a constant weight, cuSPARSELt): for each image b,
//     Y[b] [OC, OH*OW] = W [OC, K] . B[b] [K, OH*OW] as one strided-batched cuSPARSELt product
//     with the weight broadcast, B[b] being X[b] itself for a 1x1 stride-1 Conv and else the
//     image's im2col matrix in (kh, kw, c) row order: the output lands in NCHW, no transpose. The
//     bias and a ReLU are fused into cuSPARSELt's epilogue when they can be. An OH*OW that is not a
//     multiple of 8 is tried as it is (rows less aligned) and padded to 8 (the padding dropped in
//     an epilogue pass).
// The form per input shape: timed at its first call (outside a CUDA-graph capture), the fastest
// kept; ONNXSPARSE_CUDA_CONV_FORM (read at kernel creation) forces one: nhwc, nchw (per image,
// unpadded where cuSPARSELt takes it) or nchw_padded, the per-image ones where they apply.
// Attributes as ONNX Conv (see DEVELOPERS.md). layout="NHWC" (input [N, H, W, C], output
// [N, OH, OW, OC], group 1; what the compiler's NHWC conv chains write) runs the NHWC form without
// its two transposes: the input is the im2col source (a 1x1 stride-1 Conv's im2col matrix), the GEMM
// writes the output with the bias, then the activation pass.
#pragma once
#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "common/activation.h"
#include "common/op_shapes.h"
#include "common/ort_api.h"
#include "common/runtime_options.h"
#include "cuda/conv2d_compress_impl.cuh"
#include "cuda/cuda_utils.h"
#include "cuda/cusparselt_gemm.h"
#include "cuda/sparse_gemm_runner.h"

namespace onnxsparse::cuda {

template <typename OrtT>
struct Conv2dCompressCuda {
  Conv2dCompressCuda(const OrtApi* api, const OrtKernelInfo* info) noexcept;
  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<OrtT>& x,
                      const Ort::Custom::Tensor<OrtT>& values, const Ort::Custom::Tensor<uint8_t>& index,
                      std::optional<const Ort::Custom::Tensor<OrtT>*> bias, Ort::Custom::Tensor<OrtT>& y);

 private:
  using T = DeviceType<OrtT>;
  // One call's operands (device pointers) and geometry.
  struct Call {
    cudaStream_t stream = nullptr;
    ConvGeometry geo{};
    const T* x = nullptr;
    const T* values = nullptr;
    const uint8_t* index = nullptr;
    const T* bias = nullptr;
    T* y = nullptr;
  };
  enum class Form { kAuto, kNchw, kNchwPadded, kNhwc };

  Ort::Status RunNhwc(const Call& call);
  // layout="NHWC": call.x and call.y are NHWC.
  Ort::Status RunNhwcLayout(const Call& call);
  // The im2col of this conv on `geo` for the channels [channel_offset, + group_channels).
  Im2colArgs Im2colOf(const ConvGeometry& geo, int64_t channel_offset, int64_t group_channels) const;
  // The per-image form with each image's OH*OW columns `cols` apart (OH*OW, or padded to 8).
  // *used false (and OK): cuSPARSELt does not take this shape so.
  Ort::Status RunNchw(const Call& call, int64_t cols, bool* used);
  bool NchwApplies(const Call& call) const;
  // Whether this input shape runs per image (*cols > 0: with those columns) or NHWC (0): decided at
  // its first call (may build the per-image weight and time the forms; never while capturing, when
  // the NHWC form serves undecided shapes).
  Ort::Status ChooseNchw(const char* op, const Call& call, int64_t* cols);

  ConvAttributes attrs_;
  bool nhwc_ = false;  // attribute layout="NHWC"
  Activation act_;  // the fused activation (attributes activation, activation_params)
  std::string init_error_;  // set by the constructor, returned by every Compute
  SparseGemmRunner runner_;
  // The per-image form.
  RuntimeOptions options_;
  Form form_ = Form::kAuto;
  bool weight_constant_ = false;
  bool bias_constant_ = false;
  std::mutex mutex_;
  std::map<std::array<int64_t, 3>, int64_t> nchw_by_shape_;  // (N, H, W) -> columns of the per-image form, 0: NHWC
  std::unique_ptr<SparseLtWeight> nchw_weight_;  // cuSPARSELt's weight for the batched product
  bool nchw_fuse_ = true;  // bias and ReLU in cuSPARSELt's epilogue (false: cuSPARSELt refused them)
  std::string nchw_error_;                       // why it could not be built (then NHWC only)
  DeviceBuffer nonfinite_flag_;                  // the per-image form's NaN/Inf flag
};

}  // namespace onnxsparse::cuda
