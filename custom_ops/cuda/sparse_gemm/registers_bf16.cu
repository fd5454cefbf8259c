// The register-pipeline kernels for __nv_bfloat16 (see registers.cuh).
#include "cuda/sparse_gemm/registers.cuh"

ONNXSPARSE_INSTANTIATE_REGISTER_GEMM(__nv_bfloat16)
