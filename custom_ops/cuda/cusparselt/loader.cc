#include "cuda/cusparselt/loader.h"

#include <dlfcn.h>
#include <link.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <type_traits>
#include <vector>

#include "common/status.h"
#include "cuda/cuda_utils.h"

namespace onnxsparse::cuda {

#ifndef ONNXSPARSE_WITH_CUSPARSELT

bool CusparseLtAvailable(const std::string&, std::string* why) {
  *why = "this onnxsparse library was built without the cuSPARSELt header (see cmake/Cuda.cmake)";
  return false;
}
int CusparseLtVersion() { return 0; }

#else  // ONNXSPARSE_WITH_CUSPARSELT

namespace cusparselt {

namespace {

// Candidate paths of the NVIDIA wheel layout next to any already-loaded NVIDIA library
// (onnxruntime.preload_dlls() and torch load cuBLAS/cuDNN from site-packages/nvidia/...).
int CollectNvidiaDirs(struct dl_phdr_info* info, size_t, void* data) {
  auto* dirs = static_cast<std::vector<std::string>*>(data);
  if (info->dlpi_name == nullptr) return 0;
  std::string path(info->dlpi_name);
  const size_t at = path.rfind("/nvidia/");
  if (at != std::string::npos) {
    const std::string root = path.substr(0, at + 8);
    for (const char* sub : {"cusparselt/lib/libcusparseLt.so.0", "cu13/lib/libcusparseLt.so.0"}) {
      dirs->push_back(root + sub);
    }
  }
  return 0;
}

void* OpenLibrary(const std::string& preferred, std::string* tried) {
  std::vector<std::string> candidates;
  if (!preferred.empty()) candidates.push_back(preferred);
  candidates.push_back("libcusparseLt.so.0");
  dl_iterate_phdr(CollectNvidiaDirs, &candidates);
  for (const std::string& path : candidates) {
    if (void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) return handle;
    *tried += (tried->empty() ? "" : ", ") + path;
  }
  return nullptr;
}

// One attempt at loading the library and its entry points.
Loaded* Load(const std::string& preferred) {
  auto* l = new Loaded();  // lives as long as the process, like the dlopen'ed library
  std::string tried;
  void* lib = OpenLibrary(preferred, &tried);
  if (lib == nullptr) {
    l->error = "cuSPARSELt (libcusparseLt.so.0) could not be loaded (tried " + tried +
               "); install nvidia-cusparselt-cu13 or set onnxsparse.cusparselt.library "
               "(ONNXSPARSE_CUSPARSELT_LIBRARY)";
    return l;
  }
  bool ok = true;
  auto sym = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
    if (fn == nullptr) {
      ok = false;
      l->error += std::string(l->error.empty() ? "cuSPARSELt lacks " : ", ") + name;
    }
  };
  Api& a = l->api;
  sym(a.Init, "cusparseLtInit");
  sym(a.GetErrorString, "cusparseLtGetErrorString");
  sym(a.GetVersion, "cusparseLtGetVersion");
  sym(a.DenseDescriptorInit, "cusparseLtDenseDescriptorInit");
  sym(a.StructuredDescriptorInit, "cusparseLtStructuredDescriptorInit");
  sym(a.MatDescriptorDestroy, "cusparseLtMatDescriptorDestroy");
  sym(a.MatDescSetAttribute, "cusparseLtMatDescSetAttribute");
  sym(a.MatmulDescriptorInit, "cusparseLtMatmulDescriptorInit");
  sym(a.MatmulDescSetAttribute, "cusparseLtMatmulDescSetAttribute");
  sym(a.MatmulAlgSelectionInit, "cusparseLtMatmulAlgSelectionInit");
  sym(a.MatmulAlgSelectionDestroy, "cusparseLtMatmulAlgSelectionDestroy");
  sym(a.MatmulAlgSetAttribute, "cusparseLtMatmulAlgSetAttribute");
  sym(a.MatmulAlgGetAttribute, "cusparseLtMatmulAlgGetAttribute");
  sym(a.MatmulPlanInit, "cusparseLtMatmulPlanInit");
  sym(a.MatmulPlanDestroy, "cusparseLtMatmulPlanDestroy");
  sym(a.MatmulGetWorkspace, "cusparseLtMatmulGetWorkspace");
  sym(a.Matmul, "cusparseLtMatmul");
  sym(a.CompressedSize2, "cusparseLtSpMMACompressedSize2");
  sym(a.Compress2, "cusparseLtSpMMACompress2");
  if (!ok) l->error += " (library too old?)";
  return l;
}

}  // namespace

Loaded& Library(const std::string& preferred) {
  static std::atomic<Loaded*> current{nullptr};
  auto settled = [&](const Loaded* l) {
    return l != nullptr && (l->error.empty() || preferred.empty() ||
                            std::find(l->preferred_tried.begin(), l->preferred_tried.end(), preferred) !=
                                l->preferred_tried.end());
  };
  Loaded* now = current.load(std::memory_order_acquire);
  if (settled(now)) return *now;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  now = current.load(std::memory_order_acquire);
  if (settled(now)) return *now;
  // A failed attempt holds no handle; it stays allocated (a caller may still read its error).
  Loaded* next = Load(preferred);
  if (now != nullptr) next->preferred_tried = now->preferred_tried;
  if (!preferred.empty()) next->preferred_tried.push_back(preferred);
  current.store(next, std::memory_order_release);
  return *next;
}

std::string LtError(cusparseStatus_t status) {
  const Api& a = Library().api;
  return std::string("cuSPARSELt error ") + std::to_string(static_cast<int>(status)) +
         (a.GetErrorString ? std::string(" (") + a.GetErrorString(status) + ")" : std::string());
}

Ort::Status DeviceHandle(const char* op, const cusparseLtHandle_t** out) {
  Loaded& lib = Library();
  if (!lib.error.empty()) return RuntimeError(op, lib.error);
  int device = 0;
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(lib.mutex);
  auto& slot = lib.handles[device];
  if (!slot) {
    auto handle = std::make_unique<cusparseLtHandle_t>();
    LT_RETURN_IF_ERROR(op, lib.api.Init(handle.get()));
    if (lib.api.version == 0) lib.api.GetVersion(handle.get(), &lib.api.version);
    slot = std::move(handle);
  }
  *out = slot.get();
  return Ort::Status{nullptr};
}

}  // namespace cusparselt

bool CusparseLtAvailable(const std::string& library, std::string* why) {
  cusparselt::Loaded& lib = cusparselt::Library(library);
  *why = lib.error;
  return lib.error.empty();
}

int CusparseLtVersion() {
  cusparselt::Loaded& lib = cusparselt::Library();
  if (!lib.error.empty()) return 0;
  if (lib.api.version == 0) {
    const cusparseLtHandle_t* h = nullptr;
    Ort::Status ignored = cusparselt::DeviceHandle("cuSPARSELt", &h);
    (void)ignored;
  }
  return lib.api.version;
}

#endif  // ONNXSPARSE_WITH_CUSPARSELT

}  // namespace onnxsparse::cuda
