// The cp.async ring kernels for __half on SPEC's form decoded (see async.cuh).
#include "cuda/sparse_gemm/async.cuh"

ONNXSPARSE_INSTANTIATE_ASYNC_GEMM(__half, false)
