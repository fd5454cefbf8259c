// Kernel-level probe of the sparse GEMM paths, outside ONNX Runtime (driven by probe.py, which
// runs it in child processes so that a kernel that kills its CUDA context costs one child only).
//
//   gemm_probe own  DTYPE M K N VARIANT...     the own small-M kernels vs cuBLAS dense (3, 4:
//                                              registers; 5, 6: cp.async, decoding; 7, 8: cp.async,
//                                              packed, sparse MMA; 6 and 7 with PDL)
//   gemm_probe cslt DTYPE M K N FIRST_ID       cuSPARSELt's default algorithm, then every
//                                              configuration id from FIRST_ID (a line each)
//   gemm_probe search DTYPE M K N              cusparseLtMatmulSearch's choice
//
// DTYPE is f16 or bf16. Y[M, N] = X[M, K] @ W[K, N], W 2:4 along K, stored as the library's
// operators receive it (SPEC's values [N, K/2] and index [N, K/8]). Every timing rotates through
// enough weight copies (>= 256 MB) that no weight stays in L2, and every result is checked against
// cuBLAS on the dense weight. Output lines: "<what> <us per call> <max |err| / max |ref|>".
// Environment: PROBE_CUBLAS and PROBE_CUSPARSELT name the shared libraries; PROBE_BIAS=1 fuses a bias.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <cusparseLt.h>
#include <dlfcn.h>
#include <library_types.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/sparse_gemm_impl.cuh"

namespace {

using onnxsparse::cuda::LaunchSparseGemm;
using onnxsparse::cuda::SparseGemmArgs;

#define CHECK_CUDA(expr)                                                                   \
  do {                                                                                     \
    cudaError_t _e = (expr);                                                               \
    if (_e != cudaSuccess) {                                                               \
      std::printf("cuda-error %d %s at %s:%d\n", static_cast<int>(_e), cudaGetErrorString(_e), __FILE__, __LINE__); \
      std::fflush(stdout);                                                                 \
      std::exit(3);                                                                        \
    }                                                                                      \
  } while (0)

void* Sym(void* lib, const char* name) {
  void* f = dlsym(lib, name);
  if (f == nullptr) {
    std::printf("missing-symbol %s\n", name);
    std::exit(4);
  }
  return f;
}

// cuBLAS, declared here (its header is not on the build machine).
using CublasHandle = void*;
using CublasCreate = int (*)(CublasHandle*);
using CublasSetStream = int (*)(CublasHandle, cudaStream_t);
using CublasGemmEx = int (*)(CublasHandle, int, int, int, int, int, const void*, const void*, cudaDataType, int,
                             const void*, cudaDataType, int, const void*, void*, cudaDataType, int, int, int);
constexpr int kCublasOpN = 0;
constexpr int kCublasCompute32F = 68;
constexpr int kCublasGemmDefault = -1;

struct Cublas {
  CublasHandle handle = nullptr;
  CublasGemmEx gemm = nullptr;
  explicit Cublas(cudaStream_t stream) {
    const char* path = std::getenv("PROBE_CUBLAS");
    void* lib = dlopen(path ? path : "libcublas.so.13", RTLD_NOW | RTLD_GLOBAL);
    if (lib == nullptr) {
      std::printf("no-cublas %s\n", dlerror());
      std::exit(4);
    }
    reinterpret_cast<CublasCreate>(Sym(lib, "cublasCreate_v2"))(&handle);
    reinterpret_cast<CublasSetStream>(Sym(lib, "cublasSetStream_v2"))(handle, stream);
    gemm = reinterpret_cast<CublasGemmEx>(Sym(lib, "cublasGemmEx"));
  }
  // Y[m, n] = X[m, k] @ Wd[k, n], all row-major (column-major: Y^T = Wd^T X^T).
  int Run(const void* x, const void* wd, void* y, int m, int k, int n, cudaDataType dt) const {
    const float one = 1.f, zero = 0.f;
    return gemm(handle, kCublasOpN, kCublasOpN, n, m, k, &one, wd, dt, n, x, dt, k, &zero, y, dt, n,
                kCublasCompute32F, kCublasGemmDefault);
  }
};

struct Problem {
  bool bf16 = false;
  int m = 0, k = 0, n = 0;
  int copies = 1;
  std::vector<uint16_t> x, values, dense_kn, dense_nk;  // host, raw 16-bit
  std::vector<uint8_t> index;
};

uint16_t ToBits(float f, bool bf16) {
  if (bf16) {
    __nv_bfloat16 h = __float2bfloat16_rn(f);
    uint16_t b;
    std::memcpy(&b, &h, 2);
    return b;
  }
  __half h = __float2half_rn(f);
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}

float FromBits(uint16_t b, bool bf16) {
  if (bf16) {
    uint32_t u = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  __half h;
  std::memcpy(&h, &b, 2);
  return __half2float(h);
}

void MakeProblem(Problem& p) {
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_int_distribution<int> pick(0, 5);
  static const int kPairs[6][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};
  const int64_t k = p.k, n = p.n, m = p.m;
  p.x.resize(m * k);
  for (auto& v : p.x) v = ToBits(normal(rng), p.bf16);
  p.values.assign(n * k / 2, 0);
  p.index.assign(n * (k / 8), 0);
  p.dense_kn.assign(k * n, 0);
  p.dense_nk.assign(n * k, 0);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t g = 0; g < k / 4; ++g) {
      const int* pos = kPairs[pick(rng)];
      for (int j = 0; j < 2; ++j) {
        const uint16_t v = ToBits(0.05f * normal(rng), p.bf16);
        p.values[r * (k / 2) + 2 * g + j] = v;
        p.dense_kn[(4 * g + pos[j]) * n + r] = v;
        p.dense_nk[r * k + 4 * g + pos[j]] = v;
      }
      const uint8_t nibble = static_cast<uint8_t>(pos[0] | ((pos[1] - 1) << 2));
      p.index[r * (k / 8) + g / 2] |= (g & 1) ? (nibble << 4) : nibble;
    }
  }
  const double weight_bytes = static_cast<double>(n) * k * 2;
  p.copies = std::max(1, static_cast<int>(std::ceil(256e6 / weight_bytes)));
}

template <typename T>
T* Upload(const std::vector<T>& host, int copies = 1) {
  T* d = nullptr;
  CHECK_CUDA(cudaMalloc(&d, host.size() * sizeof(T) * copies));
  for (int c = 0; c < copies; ++c) {
    CHECK_CUDA(cudaMemcpy(d + c * host.size(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  return d;
}

double RelErr(const uint16_t* got_dev, const std::vector<uint16_t>& ref, bool bf16) {
  std::vector<uint16_t> got(ref.size());
  CHECK_CUDA(cudaMemcpy(got.data(), got_dev, ref.size() * 2, cudaMemcpyDeviceToHost));
  double max_ref = 0, max_err = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double r = FromBits(ref[i], bf16), g = FromBits(got[i], bf16);
    max_ref = std::max(max_ref, std::fabs(r));
    max_err = std::max(max_err, std::isfinite(g) ? std::fabs(g - r) : 1e30);
  }
  return max_err / std::max(max_ref, 1e-30);
}

// us per call of launch(copy) over `copies` rotating weights; launch returns 0 on success.
template <typename Launch>
double TimeUs(cudaStream_t stream, int copies, Launch launch) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  for (int c = 0; c < copies; ++c) launch(c);  // warm-up
  CHECK_CUDA(cudaStreamSynchronize(stream));
  int reps = std::max(20, copies * 4);
  double us = 0;
  for (int pass = 0; pass < 3; ++pass) {
    CHECK_CUDA(cudaEventRecord(a, stream));
    for (int r = 0; r < reps; ++r) launch(r % copies);
    CHECK_CUDA(cudaEventRecord(b, stream));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    const double this_us = ms * 1000.0 / reps;
    us = pass == 0 ? this_us : std::min(us, this_us);
    if (ms > 200) break;
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return us;
}

struct Lt {
  void* lib = nullptr;
#define LT_FN(name) decltype(&cusparseLt##name) name = nullptr;
  LT_FN(Init) LT_FN(DenseDescriptorInit) LT_FN(StructuredDescriptorInit) LT_FN(MatmulDescriptorInit)
  LT_FN(MatmulAlgSelectionInit) LT_FN(MatmulAlgSetAttribute) LT_FN(MatmulAlgGetAttribute) LT_FN(MatmulPlanInit)
  LT_FN(MatmulPlanDestroy) LT_FN(MatmulGetWorkspace) LT_FN(MatmulSearch) LT_FN(Matmul) LT_FN(SpMMACompressedSize2)
  LT_FN(SpMMACompress2) LT_FN(GetVersion) LT_FN(MatmulAlgSelectionDestroy) LT_FN(MatmulDescSetAttribute)
#undef LT_FN
  Lt() {
    const char* path = std::getenv("PROBE_CUSPARSELT");
    lib = dlopen(path ? path : "libcusparseLt.so.0", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      std::printf("no-cusparselt %s\n", dlerror());
      std::exit(4);
    }
#define LT_SYM(name) name = reinterpret_cast<decltype(name)>(Sym(lib, "cusparseLt" #name));
    LT_SYM(Init) LT_SYM(DenseDescriptorInit) LT_SYM(StructuredDescriptorInit) LT_SYM(MatmulDescriptorInit)
    LT_SYM(MatmulAlgSelectionInit) LT_SYM(MatmulAlgSetAttribute) LT_SYM(MatmulAlgGetAttribute) LT_SYM(MatmulPlanInit)
    LT_SYM(MatmulPlanDestroy) LT_SYM(MatmulGetWorkspace) LT_SYM(MatmulSearch) LT_SYM(Matmul)
    LT_SYM(SpMMACompressedSize2) LT_SYM(SpMMACompress2) LT_SYM(GetVersion) LT_SYM(MatmulAlgSelectionDestroy)
    LT_SYM(MatmulDescSetAttribute)
#undef LT_SYM
  }
};

#define CHECK_LT(expr)                                                   \
  do {                                                                   \
    cusparseStatus_t _s = (expr);                                        \
    if (_s != CUSPARSE_STATUS_SUCCESS) {                                 \
      std::printf("lt-error %d at line %d\n", static_cast<int>(_s), __LINE__); \
      std::fflush(stdout);                                               \
      std::exit(5);                                                      \
    }                                                                    \
  } while (0)

int RunOwn(Problem& p, const std::vector<int>& variants) {
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  Cublas blas(stream);
  const cudaDataType dt = p.bf16 ? CUDA_R_16BF : CUDA_R_16F;
  uint16_t* x = Upload(p.x);
  uint16_t* wd = Upload(p.dense_kn, p.copies);
  uint16_t* values = Upload(p.values, p.copies);
  uint8_t* index = Upload(p.index, p.copies);
  uint16_t *y_ref, *y;
  const size_t ysize = static_cast<size_t>(p.m) * p.n;
  CHECK_CUDA(cudaMalloc(&y_ref, ysize * 2));
  CHECK_CUDA(cudaMalloc(&y, ysize * 2));
  const size_t wsize = static_cast<size_t>(p.k) * p.n;
  if (blas.Run(x, wd, y_ref, p.m, p.k, p.n, dt) != 0) std::printf("cublas-error\n");
  CHECK_CUDA(cudaStreamSynchronize(stream));
  std::vector<uint16_t> ref(ysize);
  CHECK_CUDA(cudaMemcpy(ref.data(), y_ref, ysize * 2, cudaMemcpyDeviceToHost));
  const double dense_us = TimeUs(stream, p.copies, [&](int c) { blas.Run(x, wd + c * wsize, y_ref, p.m, p.k, p.n, dt); });
  std::printf("dense %.2f 0\n", dense_us);
  // Variants 7 and 8: the cp.async kernel on the packed weight (sparse tensor-core MMA).
  void* packed = nullptr;
  const size_t packed_bytes = onnxsparse::cuda::PackedWeightBytes(p.n, p.k);
  for (int variant : variants) {
    SparseGemmArgs a;
    a.x = x, a.m = p.m, a.k = p.k, a.n = p.n, a.values = values, a.index = index, a.y = y, a.ldy = p.n;
    // The library's variants 3, 4, 5 and 7, 5 and 8 without PDL, 6 and 7 with it.
    a.variant = static_cast<onnxsparse::cuda::GemmVariant>(variant == 6 ? 5 : variant == 8 ? 7 : variant);
    a.pdl = variant == 6 || variant == 7;
    a.weight_constant = true;
    const bool use_packed = variant == 7 || variant == 8;
    if (use_packed) {
      if (!onnxsparse::cuda::CanPackWeight(p.k, values, index)) continue;
      if (packed == nullptr) {
        CHECK_CUDA(cudaMalloc(&packed, packed_bytes * p.copies));
        for (int c = 0; c < p.copies; ++c) {
          const auto pack = p.bf16 ? onnxsparse::cuda::LaunchPackWeight<__nv_bfloat16>
                                   : onnxsparse::cuda::LaunchPackWeight<__half>;
          CHECK_CUDA(pack(values + c * (wsize / 2), index + c * (wsize / 8), p.n, p.k,
                                                        static_cast<char*>(packed) + c * packed_bytes, stream));
        }
      }
    }
    CHECK_CUDA(cudaMemset(y, 0xFF, ysize * 2));
    auto launch = [&](int c) {
      SparseGemmArgs b = a;
      b.values = values + c * (wsize / 2);
      b.index = index + c * (wsize / 8);
      if (use_packed) b.packed = static_cast<char*>(packed) + c * packed_bytes;
      return p.bf16 ? LaunchSparseGemm<__nv_bfloat16>(b, stream) : LaunchSparseGemm<__half>(b, stream);
    };
    CHECK_CUDA(launch(0));
    CHECK_CUDA(cudaStreamSynchronize(stream));
    const double err = RelErr(y, ref, p.bf16);
    const double us = TimeUs(stream, p.copies, launch);
    std::printf("own-v%d %.2f %.3g\n", variant, us, err);
    std::fflush(stdout);
  }
  return 0;
}

int RunLt(Problem& p, int first_id, bool search) {
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  Cublas blas(stream);
  Lt lt;
  const cudaDataType dt = p.bf16 ? CUDA_R_16BF : CUDA_R_16F;
  cusparseLtHandle_t h;
  CHECK_LT(lt.Init(&h));
  int version = 0;
  lt.GetVersion(&h, &version);
  std::printf("version %d 0\n", version);
  uint16_t* x = Upload(p.x);
  uint16_t* wd = Upload(p.dense_kn);
  uint16_t* wnk = Upload(p.dense_nk);
  const size_t ysize = static_cast<size_t>(p.m) * p.n;
  uint16_t *y_ref, *y;
  CHECK_CUDA(cudaMalloc(&y_ref, ysize * 2));
  CHECK_CUDA(cudaMalloc(&y, ysize * 2));
  blas.Run(x, wd, y_ref, p.m, p.k, p.n, dt);
  CHECK_CUDA(cudaStreamSynchronize(stream));
  std::vector<uint16_t> ref(ysize);
  CHECK_CUDA(cudaMemcpy(ref.data(), y_ref, ysize * 2, cudaMemcpyDeviceToHost));
  const double dense_us = TimeUs(stream, 1, [&](int) { blas.Run(x, wd, y_ref, p.m, p.k, p.n, dt); });
  std::printf("dense %.2f 0\n", dense_us);
  // The library's layout: A = W^T row-major [N, K] structured, opA = N; B = X row-major [M, K],
  // opB = T; D column-major [N, M] (= Y row-major [M, N]).
  cusparseLtMatDescriptor_t ma, mb, mc;
  CHECK_LT(lt.StructuredDescriptorInit(&h, &ma, p.n, p.k, p.k, 16, dt, CUSPARSE_ORDER_ROW,
                                       CUSPARSELT_SPARSITY_50_PERCENT));
  CHECK_LT(lt.DenseDescriptorInit(&h, &mb, p.m, p.k, p.k, 16, dt, CUSPARSE_ORDER_ROW));
  CHECK_LT(lt.DenseDescriptorInit(&h, &mc, p.n, p.m, p.n, 16, dt, CUSPARSE_ORDER_COL));
  cusparseLtMatmulDescriptor_t mm;
  CHECK_LT(lt.MatmulDescriptorInit(&h, &mm, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_TRANSPOSE, &ma, &mb,
                                   &mc, &mc, CUSPARSE_COMPUTE_32F));
  // PROBE_BIAS=1: a (zero) bias fused into the epilogue, as the library does for a constant bias.
  void* bias = nullptr;
  if (const char* b = std::getenv("PROBE_BIAS"); b != nullptr && std::atoi(b) != 0) {
    CHECK_CUDA(cudaMalloc(&bias, static_cast<size_t>(p.n) * 2));
    CHECK_CUDA(cudaMemset(bias, 0, static_cast<size_t>(p.n) * 2));
    CHECK_LT(lt.MatmulDescSetAttribute(&h, &mm, CUSPARSELT_MATMUL_BIAS_POINTER, &bias, sizeof(bias)));
  }
  size_t csize = 0, bsize = 0;
  CHECK_LT(lt.SpMMACompressedSize2(&h, &ma, &csize, &bsize));
  void *compressed, *cbuf;
  CHECK_CUDA(cudaMalloc(&compressed, csize));
  CHECK_CUDA(cudaMalloc(&cbuf, bsize + 16));
  CHECK_LT(lt.SpMMACompress2(&h, &ma, 1, CUSPARSE_OPERATION_NON_TRANSPOSE, wnk, compressed, cbuf, stream));
  CHECK_CUDA(cudaStreamSynchronize(stream));
  const float alpha = 1.f, beta = 0.f;
  // id < 0: cuSPARSELt's default; search: cusparseLtMatmulSearch.
  auto try_config = [&](int id, bool do_search) {
    cusparseLtMatmulAlgSelection_t alg;
    CHECK_LT(lt.MatmulAlgSelectionInit(&h, &alg, &mm, CUSPARSELT_MATMUL_ALG_DEFAULT));
    if (id >= 0) {
      if (lt.MatmulAlgSetAttribute(&h, &alg, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &id, sizeof(id)) != CUSPARSE_STATUS_SUCCESS) {
        std::printf("id %d rejected 0\n", id);
        return;
      }
    }
    cusparseLtMatmulPlan_t plan;
    if (lt.MatmulPlanInit(&h, &plan, &mm, &alg) != CUSPARSE_STATUS_SUCCESS) {
      std::printf("id %d plan-rejected 0\n", id);
      lt.MatmulAlgSelectionDestroy(&alg);
      return;
    }
    size_t ws = 0;
    CHECK_LT(lt.MatmulGetWorkspace(&h, &plan, &ws));
    void* work = nullptr;
    CHECK_CUDA(cudaMalloc(&work, std::max<size_t>(ws, 256) * 2));
    cudaStream_t streams[1] = {stream};
    int chosen = id;
    if (do_search) {
      CHECK_LT(lt.MatmulSearch(&h, &plan, &alpha, compressed, x, &beta, y, y, work, streams, 1));
      lt.MatmulAlgGetAttribute(&h, &alg, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &chosen, sizeof(chosen));
      CHECK_LT(lt.MatmulGetWorkspace(&h, &plan, &ws));
      CHECK_CUDA(cudaFree(work));
      CHECK_CUDA(cudaMalloc(&work, std::max<size_t>(ws, 256) * 2));
    }
    int split_k = -1;
    lt.MatmulAlgGetAttribute(&h, &alg, CUSPARSELT_MATMUL_SPLIT_K, &split_k, sizeof(split_k));
    CHECK_CUDA(cudaMemset(y, 0xFF, ysize * 2));
    CHECK_LT(lt.Matmul(&h, &plan, &alpha, compressed, x, &beta, y, y, work, streams, 1));
    CHECK_CUDA(cudaStreamSynchronize(stream));
    const double err = RelErr(y, ref, p.bf16);
    const double us = TimeUs(stream, 1, [&](int) { lt.Matmul(&h, &plan, &alpha, compressed, x, &beta, y, y, work, streams, 1); });
    std::printf("%s %d %.2f %.3g splitk=%d ws=%zu\n", do_search ? "search" : (id < 0 ? "default" : "id"), chosen, us,
                err, split_k, ws);
    std::fflush(stdout);
    CHECK_CUDA(cudaFree(work));
    lt.MatmulPlanDestroy(&plan);
    lt.MatmulAlgSelectionDestroy(&alg);
  };
  if (search) {
    try_config(-1, true);
    return 0;
  }
  int max_id = -1;
  {
    cusparseLtMatmulAlgSelection_t alg;
    CHECK_LT(lt.MatmulAlgSelectionInit(&h, &alg, &mm, CUSPARSELT_MATMUL_ALG_DEFAULT));
    CHECK_LT(lt.MatmulAlgGetAttribute(&h, &alg, CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID, &max_id, sizeof(max_id)));
    lt.MatmulAlgSelectionDestroy(&alg);
  }
  if (const char* cap = std::getenv("PROBE_MAX_ID"); cap != nullptr) max_id = std::min(max_id, std::atoi(cap));
  std::printf("max_id %d 0\n", max_id);
  if (first_id <= 0) try_config(-1, false);
  for (int id = std::max(first_id, 0); id <= max_id; ++id) {
    std::printf("try %d\n", id);
    std::fflush(stdout);
    try_config(id, false);
  }
  std::printf("done\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 6) {
    std::fprintf(stderr, "usage: gemm_probe own|cslt|search f16|bf16 M K N [VARIANT...|FIRST_ID]\n");
    return 2;
  }
  const std::string mode = argv[1];
  Problem p;
  p.bf16 = std::string(argv[2]) == "bf16";
  p.m = std::atoi(argv[3]);
  p.k = std::atoi(argv[4]);
  p.n = std::atoi(argv[5]);
  MakeProblem(p);
  if (mode == "own") {
    std::vector<int> variants;
    for (int i = 6; i < argc; ++i) variants.push_back(std::atoi(argv[i]));
    return RunOwn(p, variants);
  }
  if (mode == "cslt") return RunLt(p, argc > 6 ? std::atoi(argv[6]) : 0, false);
  if (mode == "search") return RunLt(p, 0, true);
  return 2;
}
