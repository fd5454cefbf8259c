// cuSPARSELt, loaded at run time (dlopen of libcusparseLt.so.0): the entry points this library
// calls, resolved with dlsym, and the process's handle per device. Internal to cuda/cusparselt/.
#pragma once
#ifdef ONNXSPARSE_WITH_CUSPARSELT
#include <cusparseLt.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/ort_api.h"
#include "cuda/cusparselt_gemm.h"

namespace onnxsparse::cuda::cusparselt {

struct Api {
  int version = 0;
  decltype(&cusparseLtInit) Init = nullptr;
  decltype(&cusparseLtGetErrorString) GetErrorString = nullptr;
  decltype(&cusparseLtGetVersion) GetVersion = nullptr;
  decltype(&cusparseLtDenseDescriptorInit) DenseDescriptorInit = nullptr;
  decltype(&cusparseLtStructuredDescriptorInit) StructuredDescriptorInit = nullptr;
  decltype(&cusparseLtMatDescriptorDestroy) MatDescriptorDestroy = nullptr;
  decltype(&cusparseLtMatDescSetAttribute) MatDescSetAttribute = nullptr;  // batches (Conv's per-image form)
  decltype(&cusparseLtMatmulDescriptorInit) MatmulDescriptorInit = nullptr;
  decltype(&cusparseLtMatmulDescSetAttribute) MatmulDescSetAttribute = nullptr;
  decltype(&cusparseLtMatmulAlgSelectionInit) MatmulAlgSelectionInit = nullptr;
  decltype(&cusparseLtMatmulAlgSelectionDestroy) MatmulAlgSelectionDestroy = nullptr;
  decltype(&cusparseLtMatmulAlgSetAttribute) MatmulAlgSetAttribute = nullptr;
  decltype(&cusparseLtMatmulAlgGetAttribute) MatmulAlgGetAttribute = nullptr;
  decltype(&cusparseLtMatmulPlanInit) MatmulPlanInit = nullptr;
  decltype(&cusparseLtMatmulPlanDestroy) MatmulPlanDestroy = nullptr;
  decltype(&cusparseLtMatmulGetWorkspace) MatmulGetWorkspace = nullptr;
  decltype(&cusparseLtMatmul) Matmul = nullptr;
  decltype(&cusparseLtSpMMACompressedSize2) CompressedSize2 = nullptr;
  decltype(&cusparseLtSpMMACompress2) Compress2 = nullptr;
};

struct Loaded {
  Api api;
  std::string error;  // empty when loaded
  std::mutex mutex;
  std::map<int, std::unique_ptr<cusparseLtHandle_t>> handles;  // one per device
  std::vector<std::string> preferred_tried;  // the `preferred` paths this attempt and earlier ones tried
};

// The library: the path `preferred` (onnxsparse.cusparselt.library) first, then the loader's search
// path, then the NVIDIA wheel layout next to any NVIDIA library already loaded. Loaded once; an
// attempt that failed is made again when a caller names a path not tried yet (the process's first
// caller may name none: a cache lookup before any kernel passed its session's path).
Loaded& Library(const std::string& preferred = std::string());

std::string LtError(cusparseStatus_t status);

#define LT_RETURN_IF_ERROR(op, expr)                                                                   \
  do {                                                                                                 \
    cusparseStatus_t _st = (expr);                                                                     \
    if (_st != CUSPARSE_STATUS_SUCCESS) return RuntimeError(op, #expr ": " + ::onnxsparse::cuda::cusparselt::LtError(_st)); \
  } while (0)

// The process's cuSPARSELt handle for the current device (created on first use).
Ort::Status DeviceHandle(const char* op, const cusparseLtHandle_t** out);

inline bool IsInt8(ElementType type) {
  return type == ElementType::kInt8 || type == ElementType::kInt8Scaled || type == ElementType::kInt8ScaledFloat;
}
inline cudaDataType DataType(ElementType type) {
  return type == ElementType::kFloat16 ? CUDA_R_16F : IsInt8(type) ? CUDA_R_8I : CUDA_R_16BF;
}
// The product's type and the compute type: int8 gives int32 (compute 32I), or int8 / float scaled in
// the epilogue (kInt8Scaled, kInt8ScaledFloat); fp16/bf16 their own (32F).
inline cudaDataType OutputDataType(ElementType type) {
  return type == ElementType::kInt8 ? CUDA_R_32I : type == ElementType::kInt8ScaledFloat ? CUDA_R_32F : DataType(type);
}
inline cusparseComputeType ComputeType(ElementType type) {
  return IsInt8(type) ? CUSPARSE_COMPUTE_32I : CUSPARSE_COMPUTE_32F;
}
// The element type in the tuning cache file (CacheDtype: the same values).
inline int CacheType(ElementType type) { return static_cast<int>(type); }

}  // namespace onnxsparse::cuda::cusparselt

#endif  // ONNXSPARSE_WITH_CUSPARSELT
