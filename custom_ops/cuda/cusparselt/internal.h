// What plans.cc and timing.cc share: SparseLtWeight's cuSPARSELt state, and the search's helpers.
#pragma once
#ifdef ONNXSPARSE_WITH_CUSPARSELT
#include <mutex>

#include "cuda/cusparselt/loader.h"
#include "cuda/cusparselt_gemm.h"

namespace onnxsparse::cuda {

// D[n, m] = A[n, k] * op(B)[k, m]: A the structured weight, row-major [n, k] (SPEC's rows decoded),
// opA = N; B = X, row-major [m, k], opB = T; D column-major [n, m] with ld = ldy, i.e. row-major
// Y[m, ldy] (the layout PyTorch's semi-structured linear uses with cuSPARSELt).
struct SparseLtWeight::Impl {
  const cusparseLtHandle_t* handle = nullptr;
  cusparseLtMatDescriptor_t mat_a;
  bool has_mat_a = false;
};

// A plan serves every weight of its problem (SparseLtWeight::SharedPlan): the descriptors hold
// shapes, types and the epilogue; the compressed weight is given per call, and the bias pointer,
// a matmul-descriptor attribute, is set to the calling weight's before each call that differs.
struct SparseLtWeight::Plan {
  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() { Clear(); }
  void Clear();  // destroys what was made, back to a new plan (plans.cc)

  std::mutex mutex;           // held while it is made, and around each bias change and call
  bool made = false;          // described, configured and planned (supported or not)
  bool prepared = false;      // made ahead (SparseLtWeight::Prepare)
  const void* bias = nullptr; // the bias pointer the matmul descriptor holds now
  cusparseLtMatDescriptor_t mat_b, mat_c;
  cusparseLtMatmulDescriptor_t matmul;
  cusparseLtMatmulAlgSelection_t alg;
  cusparseLtMatmulPlan_t plan;
  bool supported = false;
  bool has_alg = false;      // alg was made (cuSPARSELt's selection took 0.2-0.37 s on an H200: made once)
  bool initialised = false;  // plan was made
  int config_id = -1;      // the algorithm configuration chosen (-1: cuSPARSELt's default)
  float best_us = -1.f;    // its measured time per call (-1: not measured, e.g. chosen during capture)
  // The weight's shape, described again by each plan (a batched one with its batch count), so that
  // the plan outlives the weight that made it.
  cusparseLtMatDescriptor_t mat_a;
  bool has_mat_a = false;
  bool has_dense = false;  // mat_b, mat_c and matmul were made
};

namespace cusparselt {

// Microseconds per cusparseLtMatmul call of `plan` (the fastest of two passes of 5 calls; one
// pass when it takes over 5 ms), -1 on any error.
float TimeMatmul(const cusparseLtHandle_t* h, const cusparseLtMatmulPlan_t* plan, const void* a, const void* x,
                 void* y, void* workspace, const void* alpha, cudaStream_t stream);

// The highest configuration id to time for the matmul of `alg` (a selection made for it): cuSPARSELt's own highest, capped at the range
// known to be safe for this version and GPU (-1: none), or at options.cusparselt_max_config_id.
// Warns once per process (on `logger`) when no range is known safe.
Ort::Status SearchedMaxConfigId(const char* op, const cusparseLtHandle_t* h, const cusparseLtMatmulAlgSelection_t* alg,
                                int sm_major, const RuntimeOptions& options, const OrtLogger* logger, int* max_id);

}  // namespace cusparselt
}  // namespace onnxsparse::cuda

#endif  // ONNXSPARSE_WITH_CUSPARSELT
