// The register-pipeline kernels for __half (see registers.cuh).
#include "cuda/sparse_gemm/registers.cuh"

ONNXSPARSE_INSTANTIATE_REGISTER_GEMM(__half)
