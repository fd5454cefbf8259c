// The cp.async ring kernels for __nv_bfloat16 on SPEC's form decoded (see async.cuh).
#include "cuda/sparse_gemm/async.cuh"

ONNXSPARSE_INSTANTIATE_ASYNC_GEMM(__nv_bfloat16, false)
