// The cp.async ring kernels for __half on the packed weight (see async.cuh).
#include "cuda/sparse_gemm/async.cuh"

ONNXSPARSE_INSTANTIATE_ASYNC_GEMM(__half, true)
