// SparseLtWeight::RunBatched: Conv's per-image product Y_b = W . X_b as one strided-batched
// cuSPARSELt matmul, the weight broadcast (batch stride 0), every matrix row-major, so that the
// output of each image lands in NCHW. Its plans share GetPlan's tuning (process, cache file,
// search), keyed by M = batches * cols and ldy = -cols.
#include <cstdint>

#include "common/status.h"
#include "cuda/cusparselt_gemm.h"

#ifdef ONNXSPARSE_WITH_CUSPARSELT
#include "cuda/cusparselt/internal.h"
#endif

namespace onnxsparse::cuda {

#ifndef ONNXSPARSE_WITH_CUSPARSELT

Ort::Status SparseLtWeight::RunBatched(const char*, const void*, int64_t, int64_t, void*, bool, cudaStream_t,
                                       bool* used, float* us) {
  *used = false;
  if (us != nullptr) *us = -1.f;
  return Ort::Status{nullptr};
}
bool SparseLtWeight::DescribeBatched(int64_t, int64_t, Plan*) { return false; }

#else  // ONNXSPARSE_WITH_CUSPARSELT

using cusparselt::Api;
using cusparselt::Library;

bool SparseLtWeight::DescribeBatched(int64_t batches, int64_t cols, Plan* p) {
  const Api& a = Library().api;
  const cusparseLtHandle_t* h = impl_->handle;
  const cudaDataType dt = cusparselt::DataType(type_);
  const int count = static_cast<int>(batches);
  auto batch = [&](cusparseLtMatDescriptor_t* d, int64_t stride) {
    return a.MatDescSetAttribute(h, d, CUSPARSELT_MAT_NUM_BATCHES, &count, sizeof(count)) == CUSPARSE_STATUS_SUCCESS &&
           a.MatDescSetAttribute(h, d, CUSPARSELT_MAT_BATCH_STRIDE, &stride, sizeof(stride)) == CUSPARSE_STATUS_SUCCESS;
  };
  // A: the structured weight [n, k] as Build described it, broadcast; B: X_b [k, cols]; C = D: Y_b [n, cols].
  // The dense operands' rows are cols elements apart: their alignment is what cols allows (16 bytes
  // at most), so that an image's OH*OW needs no padding where cuSPARSELt takes the smaller one.
  const int64_t row_bytes = cols * 2;
  const uint32_t align = row_bytes % 16 == 0 ? 16 : row_bytes % 8 == 0 ? 8 : row_bytes % 4 == 0 ? 4 : 2;
  if (a.StructuredDescriptorInit(h, &p->mat_a, n_, k_, k_, 16, dt, CUSPARSE_ORDER_ROW,
                                 CUSPARSELT_SPARSITY_50_PERCENT) != CUSPARSE_STATUS_SUCCESS) {
    return false;
  }
  bool ok = batch(&p->mat_a, 0);
  bool has_b = false, has_c = false;
  if (ok) ok = has_b = a.DenseDescriptorInit(h, &p->mat_b, k_, cols, cols, align, dt, CUSPARSE_ORDER_ROW) ==
                       CUSPARSE_STATUS_SUCCESS;
  if (ok) ok = batch(&p->mat_b, k_ * cols);
  if (ok) ok = has_c = a.DenseDescriptorInit(h, &p->mat_c, n_, cols, cols, align, dt, CUSPARSE_ORDER_ROW) ==
                       CUSPARSE_STATUS_SUCCESS;
  if (ok) ok = batch(&p->mat_c, n_ * cols);
  if (ok) {
    ok = a.MatmulDescriptorInit(h, &p->matmul, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                &p->mat_a, &p->mat_b, &p->mat_c, &p->mat_c, CUSPARSE_COMPUTE_32F) ==
         CUSPARSE_STATUS_SUCCESS;
  }
  if (ok && bias_ != nullptr) {  // one bias for every image
    const int64_t bias_stride = 0;
    ok = a.MatmulDescSetAttribute(h, &p->matmul, CUSPARSELT_MATMUL_BIAS_STRIDE, &bias_stride, sizeof(bias_stride)) ==
         CUSPARSE_STATUS_SUCCESS;
  }
  if (ok && relu_) {
    const int relu = 1;
    ok = a.MatmulDescSetAttribute(h, &p->matmul, CUSPARSELT_MATMUL_ACTIVATION_RELU, &relu, sizeof(relu)) ==
         CUSPARSE_STATUS_SUCCESS;
  }
  if (!ok) {
    a.MatDescriptorDestroy(&p->mat_a);
    if (has_b) a.MatDescriptorDestroy(&p->mat_b);
    if (has_c) a.MatDescriptorDestroy(&p->mat_c);
    return false;
  }
  p->has_mat_a = true;
  p->has_dense = true;
  return true;
}

Ort::Status SparseLtWeight::RunBatched(const char* op, const void* x, int64_t batches, int64_t cols, void* y,
                                       bool fuse_relu, cudaStream_t stream, bool* used, float* us) {
  *used = false;
  if (us != nullptr) *us = -1.f;
  if (!ready_ || batches <= 0 || cols <= 0 || reinterpret_cast<uintptr_t>(x) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(y) % 16 != 0) {
    return Ort::Status{nullptr};
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (plans_.empty()) relu_ = fuse_relu;  // fixed by the first plan: a weight serves one op
  if (relu_ != fuse_relu) return Ort::Status{nullptr};
  Plan* plan = nullptr;
  ONNXSPARSE_RETURN_IF_ERROR(GetPlan(op, batches * cols, -cols, x, y, 1.f, stream, &plan));
  if (!plan->supported) return Ort::Status{nullptr};
  *used = true;
  if (us != nullptr) {
    *us = plan->best_us;
    return Ort::Status{nullptr};
  }
  const float alpha = 1.f;
  return Matmul(op, plan, &alpha, x, y, stream);
}

#endif  // ONNXSPARSE_WITH_CUSPARSELT

}  // namespace onnxsparse::cuda
