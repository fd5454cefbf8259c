#include "cuda/cusparselt_gemm.h"

#include <dlfcn.h>
#include <link.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <tuple>
#include <vector>

#include "cuda/sparse_gemm_impl.cuh"

#ifdef ONNXSPARSE_WITH_CUSPARSELT
#include <cusparseLt.h>
#endif

namespace onnxsparse::cuda {

#ifndef ONNXSPARSE_WITH_CUSPARSELT

bool CusparseLtAvailable(std::string* why) {
  *why = "this onnxsparse library was built without the cuSPARSELt header (see cmake/Cuda.cmake)";
  return false;
}
int CusparseLtVersion() { return 0; }
struct SparseLtWeight::Impl {};
struct SparseLtWeight::Plan {};
SparseLtWeight::SparseLtWeight() = default;
SparseLtWeight::~SparseLtWeight() = default;
Ort::Status SparseLtWeight::Build(const char* op, ElementType, const void*, const uint8_t*, int64_t, int64_t,
                                  const void*, cudaStream_t) {
  std::string why;
  CusparseLtAvailable(&why);
  return RuntimeError(op, why);
}
Ort::Status SparseLtWeight::Run(const char*, const void*, int64_t, void*, int64_t, float, cudaStream_t, bool* used) {
  *used = false;
  return Ort::Status{nullptr};
}
Ort::Status SparseLtWeight::Time(const char*, const void*, int64_t, void*, int64_t, float, cudaStream_t, float* us) {
  *us = -1.f;
  return Ort::Status{nullptr};
}

#else  // ONNXSPARSE_WITH_CUSPARSELT

namespace {

// The entry points this library calls, resolved with dlsym.
struct Api {
  int version = 0;
  decltype(&cusparseLtInit) Init = nullptr;
  decltype(&cusparseLtGetErrorString) GetErrorString = nullptr;
  decltype(&cusparseLtGetVersion) GetVersion = nullptr;
  decltype(&cusparseLtDenseDescriptorInit) DenseDescriptorInit = nullptr;
  decltype(&cusparseLtStructuredDescriptorInit) StructuredDescriptorInit = nullptr;
  decltype(&cusparseLtMatDescriptorDestroy) MatDescriptorDestroy = nullptr;
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

void* OpenLibrary(std::string* tried) {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("ONNXSPARSE_CUSPARSELT_LIBRARY"); env != nullptr && *env) candidates.push_back(env);
  candidates.push_back("libcusparseLt.so.0");
  dl_iterate_phdr(CollectNvidiaDirs, &candidates);
  for (const std::string& path : candidates) {
    if (void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) return handle;
    *tried += (tried->empty() ? "" : ", ") + path;
  }
  return nullptr;
}

struct Loaded {
  Api api;
  std::string error;  // empty when loaded
  std::mutex mutex;
  std::map<int, std::unique_ptr<cusparseLtHandle_t>> handles;  // one per device
};

Loaded& Library() {
  static Loaded* loaded = [] {
    auto* l = new Loaded();  // lives as long as the process, like the dlopen'ed library
    std::string tried;
    void* lib = OpenLibrary(&tried);
    if (lib == nullptr) {
      l->error = "cuSPARSELt (libcusparseLt.so.0) could not be loaded (tried " + tried +
                 "); install nvidia-cusparselt-cu13 or set ONNXSPARSE_CUSPARSELT_LIBRARY";
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
  }();
  return *loaded;
}

std::string LtError(cusparseStatus_t status) {
  const Api& a = Library().api;
  return std::string("cuSPARSELt error ") + std::to_string(static_cast<int>(status)) +
         (a.GetErrorString ? std::string(" (") + a.GetErrorString(status) + ")" : std::string());
}

#define LT_RETURN_IF_ERROR(op, expr)                                                  \
  do {                                                                                \
    cusparseStatus_t _st = (expr);                                                    \
    if (_st != CUSPARSE_STATUS_SUCCESS) return RuntimeError(op, #expr ": " + LtError(_st)); \
  } while (0)

// The process's cuSPARSELt handle for the current device (created on first use).
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

cudaDataType DataType(ElementType type) { return type == ElementType::kFloat16 ? CUDA_R_16F : CUDA_R_16BF; }

// The highest algorithm configuration id that is safe to run, by cuSPARSELt version and GPU, as
// measured (benchmarks/cuda/probe.py cslt runs every id in a child process): on an H200 (sm_90)
// with cuSPARSELt 0.8.0, ids 36..51 stop the CUDA context with error 715 (illegal instruction) in
// every shape tried, ids 0..35 run correctly. With 0.10.0 the ids that stop it differ by shape
// (41 in one, 16 and 34 in another, 26 in a third, none in 8 of 12), so no range is safe there.
// -1: none, so only cuSPARSELt's default algorithm is used (ONNXSPARSE_CUSPARSELT_MAX_CONFIG_ID
// opts in to timing ids 0..N).
int SafeMaxConfigId(int version, int sm_major) {
  const int env = EnvInt("ONNXSPARSE_CUSPARSELT_MAX_CONFIG_ID", -2);
  if (env != -2) return env;
  if (version / 100 == 8 && sm_major == 9) return 35;
  return -1;
}

// Microseconds per cusparseLtMatmul call of `plan` (the fastest of two passes of 5 calls; one
// pass when it takes over 5 ms), -1 on any error.
float TimeMatmul(const cusparseLtHandle_t* h, const cusparseLtMatmulPlan_t* plan, const void* a, const void* x,
                 void* y, void* workspace, float alpha, cudaStream_t stream) {
  const Api& api = Library().api;
  const float beta = 0.f;
  cudaStream_t streams[1] = {stream};
  return TimeOnStream(
      stream, 5,
      [&] { return api.Matmul(h, plan, &alpha, a, x, &beta, y, y, workspace, streams, 1) == CUSPARSE_STATUS_SUCCESS; },
      2, 5.f);
}

// The configuration chosen per problem, shared by every weight of the process (the layers of a
// model repeat a few shapes): key (device, dtype, m, n, k, ldy, bias) -> (config id, us).
struct TunedKey {
  int device;
  int type;
  int64_t m, n, k, ldy;
  bool bias;
  bool operator<(const TunedKey& o) const {
    return std::tie(device, type, m, n, k, ldy, bias) < std::tie(o.device, o.type, o.m, o.n, o.k, o.ldy, o.bias);
  }
};
std::mutex& TunedMutex() {
  static auto* mutex = new std::mutex();
  return *mutex;
}
std::map<TunedKey, std::pair<int, float>>& Tuned() {
  static auto* tuned = new std::map<TunedKey, std::pair<int, float>>();
  return *tuned;
}

// The tuning cache file. The id sweep costs about 5 s per problem (mostly cusparseLtMatmulPlanInit),
// so its results outlive the process, like the timing caches of other inference engines. A result
// holds for one cuSPARSELt version, GPU model (any ordinal) and problem, searched over ids
// 0..max_id: a different safe range may hold a faster id, or forbid the cached one. One entry a
// line, tab-separated (GPU names hold spaces), after a header naming the format:
//   0.8.1  NVIDIA H200  9.0  float16  256  512  512  512  1  35  17  8.53
constexpr char kCacheHeader[] = "# onnxsparse cuSPARSELt tuning cache v1";
constexpr char kCacheColumns[] = "# cusparselt\tgpu\tsm\tdtype\tm\tn\tk\tldy\tbias\tmax_id\tconfig\tus";

struct CacheKey {
  int version = 0;  // cuSPARSELt's, major*1000 + minor*100 + patch
  std::string gpu;  // cudaDeviceProp::name
  int sm_major = 0, sm_minor = 0;
  int type = 0;     // ElementType
  int64_t m = 0, n = 0, k = 0, ldy = 0;
  bool bias = false;
  int max_id = -1;  // the highest configuration id searched
  bool operator<(const CacheKey& o) const {
    return std::tie(version, gpu, sm_major, sm_minor, type, m, n, k, ldy, bias, max_id) <
           std::tie(o.version, o.gpu, o.sm_major, o.sm_minor, o.type, o.m, o.n, o.k, o.ldy, o.bias, o.max_id);
  }
};
struct CacheEntry {
  int config_id = -1;
  float us = -1.f;  // its time per call when it was tuned
};
using CacheEntries = std::map<CacheKey, CacheEntry>;

const char* TypeName(int type) { return type == static_cast<int>(ElementType::kFloat16) ? "float16" : "bfloat16"; }

std::string FormatEntry(const CacheKey& key, const CacheEntry& entry) {
  char us[32];
  std::snprintf(us, sizeof(us), "%.2f", entry.us);
  return StrCat(key.version / 1000, '.', key.version / 100 % 10, '.', key.version % 100, '\t', key.gpu, '\t',
                key.sm_major, '.', key.sm_minor, '\t', TypeName(key.type), '\t', key.m, '\t', key.n, '\t', key.k,
                '\t', key.ldy, '\t', key.bias ? 1 : 0, '\t', key.max_id, '\t', entry.config_id, '\t', us);
}

// A whole field as a number; false when it holds anything else.
bool ParseInt(const std::string& text, int64_t* out) {
  char* end = nullptr;
  errno = 0;
  *out = std::strtoll(text.c_str(), &end, 10);
  return !text.empty() && errno == 0 && *end == '\0';
}

// "a.b.c" (count 3) or "a.b" (count 2) -> its numbers.
bool ParseDotted(const std::string& text, int count, int64_t* parts) {
  size_t start = 0;
  for (int i = 0; i < count; ++i) {
    const size_t end = i + 1 < count ? text.find('.', start) : text.size();
    if (end == std::string::npos || !ParseInt(text.substr(start, end - start), &parts[i])) return false;
    start = end + 1;
  }
  return true;
}

// One entry line -> (key, entry); false for a comment or a malformed line, and for a configuration
// id outside the range searched (a hand-edited id beyond the safe range could stop the CUDA context).
bool ParseEntry(const std::string& line, CacheKey* key, CacheEntry* entry) {
  std::vector<std::string> f;
  for (size_t start = 0;;) {
    const size_t tab = line.find('\t', start);
    f.push_back(line.substr(start, tab == std::string::npos ? std::string::npos : tab - start));
    if (tab == std::string::npos) break;
    start = tab + 1;
  }
  int64_t version[3], sm[2], m, n, k, ldy, bias, max_id, config;
  if (f.size() != 12 || f[1].empty() || !ParseDotted(f[0], 3, version) || !ParseDotted(f[2], 2, sm) ||
      (f[3] != "float16" && f[3] != "bfloat16") || !ParseInt(f[4], &m) || !ParseInt(f[5], &n) ||
      !ParseInt(f[6], &k) || !ParseInt(f[7], &ldy) || !ParseInt(f[8], &bias) || !ParseInt(f[9], &max_id) ||
      !ParseInt(f[10], &config)) {
    return false;
  }
  char* end = nullptr;
  const float us = std::strtof(f[11].c_str(), &end);
  const int64_t kIntMax = std::numeric_limits<int>::max();
  if (f[11].empty() || *end != '\0' || !std::isfinite(us) || version[0] < 0 || version[0] > kIntMax / 1000 ||
      version[1] < 0 || version[1] > 9 || version[2] < 0 || version[2] > 99 || sm[0] < 0 || sm[0] > kIntMax ||
      sm[1] < 0 || sm[1] > kIntMax || (bias != 0 && bias != 1) || config < 0 || config > max_id || max_id > kIntMax) {
    return false;
  }
  key->version = static_cast<int>(version[0] * 1000 + version[1] * 100 + version[2]);
  key->gpu = f[1];
  key->sm_major = static_cast<int>(sm[0]);
  key->sm_minor = static_cast<int>(sm[1]);
  key->type = static_cast<int>(f[3] == "float16" ? ElementType::kFloat16 : ElementType::kBFloat16);
  key->m = m;
  key->n = n;
  key->k = k;
  key->ldy = ldy;
  key->bias = bias != 0;
  key->max_id = static_cast<int>(max_id);
  entry->config_id = static_cast<int>(config);
  entry->us = us;
  return true;
}

// The entries of the file at `path`: none when it is missing, unreadable or of another format.
CacheEntries ReadCacheFile(const std::string& path) {
  CacheEntries entries;
  std::ifstream in(path);
  std::string line;
  if (!std::getline(in, line) || line != kCacheHeader) return entries;
  while (std::getline(in, line)) {
    CacheKey key;
    CacheEntry entry;
    if (ParseEntry(line, &key, &entry)) entries[key] = entry;
  }
  return entries;
}

// mkdir -p.
bool MakeDirectories(const std::string& dir, std::string* why) {
  for (size_t slash = dir.find('/', 1);; slash = dir.find('/', slash + 1)) {
    const std::string prefix = dir.substr(0, slash);
    if (mkdir(prefix.c_str(), 0777) != 0 && errno != EEXIST) {
      const int error = errno;
      struct stat st;
      if (stat(prefix.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {  // an existing one may answer EACCES or EROFS
        *why = StrCat("cannot create ", prefix, ": ", std::strerror(error));
        return false;
      }
    }
    if (slash == std::string::npos) return true;
  }
}

// Replaces the file at `path` by `text`: written to a temporary file beside it (named by process
// and `serial`, so concurrent writers never share one) and renamed over it, so that no reader ever
// sees a partial cache.
bool ReplaceFile(const std::string& path, const std::string& text, unsigned serial, std::string* why) {
  const size_t slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0 && !MakeDirectories(path.substr(0, slash), why)) return false;
  const std::string temp = StrCat(path, ".tmp.", getpid(), '.', serial);
  std::FILE* file = std::fopen(temp.c_str(), "w");
  if (file == nullptr) {
    *why = std::strerror(errno);
    return false;
  }
  int error = 0;
  if (std::fwrite(text.data(), 1, text.size(), file) != text.size()) error = errno;
  if (std::fclose(file) != 0 && error == 0) error = errno;
  if (error == 0 && std::rename(temp.c_str(), path.c_str()) != 0) error = errno;
  if (error != 0) {
    std::remove(temp.c_str());
    *why = std::strerror(error);
  }
  return error == 0;
}

// ONNXSPARSE_CUSPARSELT_CACHE (a path; 0 or off: no file), else the XDG cache directory, else
// ~/.cache; "" when there is none.
std::string CachePath() {
  if (const char* env = std::getenv("ONNXSPARSE_CUSPARSELT_CACHE"); env != nullptr && *env) {
    return std::strcmp(env, "0") == 0 || strcasecmp(env, "off") == 0 ? std::string() : std::string(env);
  }
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  // XDG says a relative XDG_CACHE_HOME is to be ignored.
  if (xdg != nullptr && xdg[0] == '/') return std::string(xdg) + "/onnxsparse/cusparselt_tuning.txt";
  const char* home = std::getenv("HOME");
  if (home != nullptr && *home) return std::string(home) + "/.cache/onnxsparse/cusparselt_tuning.txt";
  return std::string();
}

// The file as this process knows it; guarded by TunedMutex().
struct TuningFile {
  std::string path;         // "" when disabled
  CacheEntries entries;     // read at the first lookup, refreshed at each write
  CacheEntries tuned_here;  // this process's results: they win over the file's when merged
  unsigned writes = 0;
  bool warned = false;
};

// Read once per process, at the first lookup. Caller holds TunedMutex().
TuningFile& LoadedTuningFile() {
  static TuningFile* file = [] {
    auto* f = new TuningFile();
    f->path = CachePath();
    if (!f->path.empty()) f->entries = ReadCacheFile(f->path);
    return f;
  }();
  return *file;
}

// Caller holds TunedMutex().
bool FindCached(const CacheKey& key, CacheEntry* entry) {
  const TuningFile& file = LoadedTuningFile();
  auto it = file.entries.find(key);
  if (it == file.entries.end()) return false;
  *entry = it->second;
  return true;
}

// Records a result tuned by this process and writes the file: read again (another process may have
// added entries since), merged, written. An IO error only warns, once per process: the op still
// runs, without the file. Caller holds TunedMutex().
void StoreCached(const CacheKey& key, const CacheEntry& entry) {
  TuningFile& file = LoadedTuningFile();
  if (file.path.empty()) return;
  file.tuned_here[key] = entry;
  CacheEntries merged = ReadCacheFile(file.path);
  for (const auto& [k, e] : file.tuned_here) merged[k] = e;
  std::string text = StrCat(kCacheHeader, '\n', kCacheColumns, '\n');
  for (const auto& [k, e] : merged) text += FormatEntry(k, e) + '\n';
  std::string why;
  if (!ReplaceFile(file.path, text, file.writes++, &why) && !file.warned) {
    file.warned = true;
    std::fprintf(stderr, "onnxsparse: cannot write cuSPARSELt tuning cache %s: %s\n", file.path.c_str(), why.c_str());
  }
  file.entries = std::move(merged);
}

// The GPU model of `device`, which a tuning result holds for (whatever the ordinal). Tabs and line
// breaks in the name become spaces: the file separates fields with tabs.
Ort::Status GpuModel(const char* op, int device, CacheKey* key) {
  cudaDeviceProp prop;
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaGetDeviceProperties(&prop, device));
  key->gpu.assign(prop.name, strnlen(prop.name, sizeof(prop.name)));
  std::replace_if(key->gpu.begin(), key->gpu.end(), [](char c) { return c == '\t' || c == '\n' || c == '\r'; }, ' ');
  key->sm_major = prop.major;
  key->sm_minor = prop.minor;
  return Ort::Status{nullptr};
}

// The highest configuration id to time for `matmul`: cuSPARSELt's own highest, capped at the range
// known to be safe (-1: none).
Ort::Status SearchedMaxConfigId(const char* op, const cusparseLtHandle_t* h, const cusparseLtMatmulDescriptor_t* matmul,
                                int sm_major, int* max_id) {
  const Api& a = Library().api;
  *max_id = -1;
  cusparseLtMatmulAlgSelection_t probe;
  LT_RETURN_IF_ERROR(op, a.MatmulAlgSelectionInit(h, &probe, matmul, CUSPARSELT_MATMUL_ALG_DEFAULT));
  if (a.MatmulAlgGetAttribute(h, &probe, CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID, max_id, sizeof(*max_id)) !=
      CUSPARSE_STATUS_SUCCESS) {
    *max_id = -1;
  }
  a.MatmulAlgSelectionDestroy(&probe);
  const int safe = SafeMaxConfigId(a.version, sm_major);
  static std::atomic<bool> warned{false};
  if (safe < 0 && std::getenv("ONNXSPARSE_CUSPARSELT_MAX_CONFIG_ID") == nullptr && !warned.exchange(true)) {
    // Without tuning, cuSPARSELt's default algorithm ran 0.49-0.95x of dense on an H200 (0.8.0 and
    // 0.10.0, M >= 2048): a layer the compiler chose sparse may then be slower than dense.
    std::fprintf(stderr,
                 "onnxsparse: cuSPARSELt %d.%d.%d on sm_%d has no configuration range measured safe to time, so its "
                 "default algorithm is used, which can be slower than dense; cuSPARSELt 0.8.x is measured "
                 "(ONNXSPARSE_CUSPARSELT_MAX_CONFIG_ID=N times ids 0..N at the risk of a configuration that stops "
                 "the CUDA context)\n",
                 a.version / 1000, a.version / 100 % 10, a.version % 100, sm_major * 10);
  }
  *max_id = std::min(*max_id, safe);
  return Ort::Status{nullptr};
}

}  // namespace

bool CusparseLtAvailable(std::string* why) {
  Loaded& lib = Library();
  *why = lib.error;
  return lib.error.empty();
}

int CusparseLtVersion() {
  Loaded& lib = Library();
  if (!lib.error.empty()) return 0;
  if (lib.api.version == 0) {
    const cusparseLtHandle_t* h = nullptr;
    Ort::Status ignored = DeviceHandle("cuSPARSELt", &h);
    (void)ignored;
  }
  return lib.api.version;
}

// D[n, m] = A[n, k] * op(B)[k, m]: A the structured weight, row-major [n, k] (SPEC's rows decoded),
// opA = N; B = X, row-major [m, k], opB = T; D column-major [n, m] with ld = ldy, i.e. row-major
// Y[m, ldy] (the layout PyTorch's semi-structured linear uses with cuSPARSELt).
struct SparseLtWeight::Impl {
  const cusparseLtHandle_t* handle = nullptr;
  cusparseLtMatDescriptor_t mat_a;
  bool has_mat_a = false;
};

struct SparseLtWeight::Plan {
  cusparseLtMatDescriptor_t mat_b, mat_c;
  cusparseLtMatmulDescriptor_t matmul;
  cusparseLtMatmulAlgSelection_t alg;
  cusparseLtMatmulPlan_t plan;
  bool supported = false;
  bool initialised = false;
  int config_id = -1;      // the algorithm configuration chosen (-1: cuSPARSELt's default)
  float best_us = -1.f;    // its measured time per call (-1: not measured, e.g. chosen during capture)
};

SparseLtWeight::SparseLtWeight() : impl_(std::make_unique<Impl>()) {}

SparseLtWeight::~SparseLtWeight() {
  Loaded& lib = Library();
  if (!lib.error.empty()) return;
  for (auto& entry : plans_) {
    Plan& p = *entry.second;
    if (!p.initialised) continue;
    lib.api.MatmulPlanDestroy(&p.plan);
    lib.api.MatmulAlgSelectionDestroy(&p.alg);
    lib.api.MatDescriptorDestroy(&p.mat_b);
    lib.api.MatDescriptorDestroy(&p.mat_c);
  }
  if (impl_->has_mat_a) lib.api.MatDescriptorDestroy(&impl_->mat_a);
}

Ort::Status SparseLtWeight::Build(const char* op, ElementType type, const void* values, const uint8_t* index,
                                  int64_t n, int64_t k, const void* bias, cudaStream_t stream) {
  ready_ = false;
  ONNXSPARSE_RETURN_IF_ERROR(DeviceHandle(op, &impl_->handle));
  const Api& a = Library().api;
  type_ = type;
  n_ = n;
  k_ = k;
  bias_ = bias;
  LT_RETURN_IF_ERROR(op, a.StructuredDescriptorInit(impl_->handle, &impl_->mat_a, n, k, k, 16, DataType(type),
                                                    CUSPARSE_ORDER_ROW, CUSPARSELT_SPARSITY_50_PERCENT));
  impl_->has_mat_a = true;
  size_t compressed_bytes = 0, buffer_bytes = 0;
  LT_RETURN_IF_ERROR(op, a.CompressedSize2(impl_->handle, &impl_->mat_a, &compressed_bytes, &buffer_bytes));
  DeviceBuffer dense, buffer;
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, dense.Allocate(static_cast<size_t>(n * k * 2)));
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, buffer.Allocate(buffer_bytes));
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, compressed_.Allocate(compressed_bytes));
  if (type == ElementType::kFloat16) {
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, LaunchDecompress<__half>(static_cast<const __half*>(values), index, n, k,
                                                                 dense.as<__half>(), stream));
  } else {
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(
        op, LaunchDecompress<__nv_bfloat16>(static_cast<const __nv_bfloat16*>(values), index, n, k,
                                            dense.as<__nv_bfloat16>(), stream));
  }
  LT_RETURN_IF_ERROR(op, a.Compress2(impl_->handle, &impl_->mat_a, 1, CUSPARSE_OPERATION_NON_TRANSPOSE, dense.get(),
                                     compressed_.get(), buffer.get(), stream));
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaStreamSynchronize(stream));  // before the temporaries go
  ready_ = true;
  return Ort::Status{nullptr};
}

Ort::Status SparseLtWeight::GetPlan(const char* op, int64_t m, int64_t ldy, const void* x, void* y, float alpha,
                                    cudaStream_t stream, Plan** out) {
  auto key = std::make_pair(m, ldy);
  auto it = plans_.find(key);
  if (it != plans_.end()) {
    *out = it->second.get();
    return Ort::Status{nullptr};
  }
  auto owned = std::make_unique<Plan>();
  Plan& p = *owned;
  plans_[key] = std::move(owned);
  *out = &p;
  const Api& a = Library().api;
  const cusparseLtHandle_t* h = impl_->handle;
  const cudaDataType dt = DataType(type_);
  // A shape cuSPARSELt rejects is remembered as unsupported (the own kernel runs it).
  if (a.DenseDescriptorInit(h, &p.mat_b, m, k_, k_, 16, dt, CUSPARSE_ORDER_ROW) != CUSPARSE_STATUS_SUCCESS) {
    return Ort::Status{nullptr};
  }
  if (a.DenseDescriptorInit(h, &p.mat_c, n_, m, ldy, 16, dt, CUSPARSE_ORDER_COL) != CUSPARSE_STATUS_SUCCESS) {
    a.MatDescriptorDestroy(&p.mat_b);
    return Ort::Status{nullptr};
  }
  if (a.MatmulDescriptorInit(h, &p.matmul, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_TRANSPOSE,
                             &impl_->mat_a, &p.mat_b, &p.mat_c, &p.mat_c, CUSPARSE_COMPUTE_32F) !=
      CUSPARSE_STATUS_SUCCESS) {
    a.MatDescriptorDestroy(&p.mat_b);
    a.MatDescriptorDestroy(&p.mat_c);
    return Ort::Status{nullptr};
  }
  if (bias_ != nullptr) {
    const void* bias = bias_;
    LT_RETURN_IF_ERROR(op, a.MatmulDescSetAttribute(h, &p.matmul, CUSPARSELT_MATMUL_BIAS_POINTER, &bias, sizeof(bias)));
  }
  // The algorithm: cuSPARSELt's default (heuristic) one measured 0.48-0.62x of dense on an H200
  // at M >= 256 (it picks configuration 0), its best configuration 1.04-1.46x. So at the first
  // call of an M (never during a CUDA-graph capture) every configuration id known to be safe is
  // timed with events and the fastest kept; the choice is shared by all weights of this problem,
  // and kept in the tuning cache file, where a later process finds it and makes only its plan.
  int device = 0;
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaGetDevice(&device));
  const TunedKey tuned_key{device, static_cast<int>(type_), m, n_, k_, ldy, bias_ != nullptr};
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaStreamIsCapturing(stream, &capture));
  const bool capturing = capture != cudaStreamCaptureStatusNone;
  bool known = false;
  {
    std::lock_guard<std::mutex> lock(TunedMutex());
    auto it = Tuned().find(tuned_key);
    if (it != Tuned().end()) {
      known = true;
      p.config_id = it->second.first;
      p.best_us = it->second.second;
    }
  }
  CacheKey cache_key;
  CacheEntry cached;
  bool from_cache = false, tuned_now = false;
  if (!known && !capturing && EnvInt("ONNXSPARSE_CUSPARSELT_TUNE", 1) != 0) {
    cache_key.version = a.version;
    cache_key.type = static_cast<int>(type_);
    std::tie(cache_key.m, cache_key.n, cache_key.k, cache_key.ldy) = std::make_tuple(m, n_, k_, ldy);
    cache_key.bias = bias_ != nullptr;
    ONNXSPARSE_RETURN_IF_ERROR(GpuModel(op, device, &cache_key));
    ONNXSPARSE_RETURN_IF_ERROR(SearchedMaxConfigId(op, h, &p.matmul, cache_key.sm_major, &cache_key.max_id));
    {
      std::lock_guard<std::mutex> lock(TunedMutex());
      from_cache = FindCached(cache_key, &cached);
    }
    // The cached time is not reused: the plan is timed below, like the own kernel, in this process.
    if (from_cache) {
      p.config_id = cached.config_id;
    } else {
      ONNXSPARSE_RETURN_IF_ERROR(TimeConfigs(op, cache_key.max_id, m, x, y, alpha, stream, &p));
      tuned_now = true;
    }
  }
  Ort::Status planned = InitPlan(op, &p);
  if (!planned.IsOK() && from_cache) {
    // A cached id that this cuSPARSELt build refuses (the file came from another build): tune.
    if (TraceEnabled()) {
      std::fprintf(stderr, "onnxsparse trace: cuSPARSELt m=%lld n=%lld k=%lld: cached config %d refused (%s)\n",
                   static_cast<long long>(m), static_cast<long long>(n_), static_cast<long long>(k_), p.config_id,
                   planned.GetErrorMessage().c_str());
    }
    from_cache = false;
    p.config_id = -1;
    ONNXSPARSE_RETURN_IF_ERROR(TimeConfigs(op, cache_key.max_id, m, x, y, alpha, stream, &p));
    tuned_now = true;
    planned = InitPlan(op, &p);
  }
  if (!planned.IsOK()) return planned;
  if (from_cache && TraceEnabled()) {
    std::fprintf(stderr,
                 "onnxsparse trace: cuSPARSELt m=%lld n=%lld k=%lld: config %d from cache %s (%.2f us when tuned)\n",
                 static_cast<long long>(m), static_cast<long long>(n_), static_cast<long long>(k_), p.config_id,
                 LoadedTuningFile().path.c_str(), cached.us);
  }
  size_t workspace_bytes = 0;
  LT_RETURN_IF_ERROR(op, a.MatmulGetWorkspace(h, &p.plan, &workspace_bytes));
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, GrowWorkspace(workspace_bytes));  // only at the first call of an M
  if (!capturing && p.best_us < 0.f) {
    p.best_us = TimeMatmul(h, &p.plan, compressed_.get(), x, y, Workspace(), alpha, stream);
    ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaGetLastError());
  }
  if (!known && !capturing) {
    std::lock_guard<std::mutex> lock(TunedMutex());
    Tuned()[tuned_key] = {p.config_id, p.best_us};
    if (tuned_now && p.config_id >= 0) StoreCached(cache_key, CacheEntry{p.config_id, p.best_us});
  }
  p.supported = true;
  return Ort::Status{nullptr};
}

// Times every configuration id 0..max_id on this problem; the fastest goes to plan->config_id and
// plan->best_us (left as they are when none runs). A selection per id: reusing one selection for
// every id crashed cuSPARSELt 0.8.0 (H200).
Ort::Status SparseLtWeight::TimeConfigs(const char* op, int max_id, int64_t m, const void* x, void* y, float alpha,
                                        cudaStream_t stream, Plan* plan) {
  const Api& a = Library().api;
  const cusparseLtHandle_t* h = impl_->handle;
  const auto tune_start = std::chrono::steady_clock::now();
  auto ms_since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
  };
  double plan_ms = 0.0, time_ms = 0.0;
  for (int id = 0; id <= max_id; ++id) {
    auto t0 = std::chrono::steady_clock::now();
    cusparseLtMatmulAlgSelection_t alg;
    if (a.MatmulAlgSelectionInit(h, &alg, &plan->matmul, CUSPARSELT_MATMUL_ALG_DEFAULT) != CUSPARSE_STATUS_SUCCESS) break;
    cusparseLtMatmulPlan_t candidate;
    if (a.MatmulAlgSetAttribute(h, &alg, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &id, sizeof(id)) == CUSPARSE_STATUS_SUCCESS &&
        a.MatmulPlanInit(h, &candidate, &plan->matmul, &alg) == CUSPARSE_STATUS_SUCCESS) {
      plan_ms += ms_since(t0);
      size_t bytes = 0;
      if (a.MatmulGetWorkspace(h, &candidate, &bytes) == CUSPARSE_STATUS_SUCCESS && GrowWorkspace(bytes) == cudaSuccess) {
        t0 = std::chrono::steady_clock::now();
        const float us = TimeMatmul(h, &candidate, compressed_.get(), x, y, Workspace(), alpha, stream);
        time_ms += ms_since(t0);
        if (us > 0.f && (plan->best_us < 0.f || us < plan->best_us)) {
          plan->best_us = us;
          plan->config_id = id;
        }
      }
      a.MatmulPlanDestroy(&candidate);
    }
    a.MatmulAlgSelectionDestroy(&alg);
  }
  if (TraceEnabled()) {
    std::fprintf(stderr,
                 "onnxsparse trace: cuSPARSELt m=%lld n=%lld k=%lld: ids 0..%d tuned in %.1f ms (plans %.1f, timing %.1f)"
                 " -> config %d, %.2f us\n",
                 static_cast<long long>(m), static_cast<long long>(n_), static_cast<long long>(k_), max_id,
                 ms_since(tune_start), plan_ms, time_ms, plan->config_id, plan->best_us);
  }
  ONNXSPARSE_RETURN_IF_CUDA_ERROR(op, cudaGetLastError());
  return Ort::Status{nullptr};
}

// The plan of plan->config_id (-1: cuSPARSELt's default algorithm); on failure nothing is left to
// destroy.
Ort::Status SparseLtWeight::InitPlan(const char* op, Plan* plan) {
  const Api& a = Library().api;
  const cusparseLtHandle_t* h = impl_->handle;
  LT_RETURN_IF_ERROR(op, a.MatmulAlgSelectionInit(h, &plan->alg, &plan->matmul, CUSPARSELT_MATMUL_ALG_DEFAULT));
  cusparseStatus_t status = CUSPARSE_STATUS_SUCCESS;
  if (plan->config_id >= 0) {
    status = a.MatmulAlgSetAttribute(h, &plan->alg, CUSPARSELT_MATMUL_ALG_CONFIG_ID, &plan->config_id,
                                     sizeof(plan->config_id));
  }
  if (status == CUSPARSE_STATUS_SUCCESS) status = a.MatmulPlanInit(h, &plan->plan, &plan->matmul, &plan->alg);
  if (status != CUSPARSE_STATUS_SUCCESS) {
    a.MatmulAlgSelectionDestroy(&plan->alg);
    return RuntimeError(op, StrCat("cuSPARSELt plan of configuration ", plan->config_id, ": ", LtError(status)));
  }
  plan->initialised = true;
  return Ort::Status{nullptr};
}

// A larger workspace is a new buffer; the old ones stay alive, since a CUDA graph captured for
// another M may still point at them.
cudaError_t SparseLtWeight::GrowWorkspace(size_t bytes) {
  if (bytes == 0 || (!workspaces_.empty() && workspaces_.back()->bytes() >= bytes)) return cudaSuccess;
  auto buffer = std::make_unique<DeviceBuffer>();
  const cudaError_t err = buffer->Allocate(bytes);
  if (err == cudaSuccess) workspaces_.push_back(std::move(buffer));
  return err;
}

void* SparseLtWeight::Workspace() const { return workspaces_.empty() ? nullptr : workspaces_.back()->get(); }

bool SparseLtWeight::Takes(const void* x, int64_t m, const void* y, int64_t ldy) const {
  return ready_ && m > 0 && m % kMAlign == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(y) % 16 == 0 && ldy % 8 == 0;
}

Ort::Status SparseLtWeight::Time(const char* op, const void* x, int64_t m, void* y, int64_t ldy, float alpha,
                                 cudaStream_t stream, float* us) {
  *us = -1.f;
  if (!Takes(x, m, y, ldy)) return Ort::Status{nullptr};
  std::lock_guard<std::mutex> lock(mutex_);
  Plan* plan = nullptr;
  ONNXSPARSE_RETURN_IF_ERROR(GetPlan(op, m, ldy, x, y, alpha, stream, &plan));
  if (plan->supported) *us = plan->best_us;
  return Ort::Status{nullptr};
}

Ort::Status SparseLtWeight::Run(const char* op, const void* x, int64_t m, void* y, int64_t ldy, float alpha,
                                cudaStream_t stream, bool* used) {
  *used = false;
  if (!Takes(x, m, y, ldy)) return Ort::Status{nullptr};
  std::lock_guard<std::mutex> lock(mutex_);
  Plan* plan = nullptr;
  ONNXSPARSE_RETURN_IF_ERROR(GetPlan(op, m, ldy, x, y, alpha, stream, &plan));
  if (!plan->supported) return Ort::Status{nullptr};
  const float beta = 0.f;
  cudaStream_t streams[1] = {stream};
  LT_RETURN_IF_ERROR(op, Library().api.Matmul(impl_->handle, &plan->plan, &alpha, compressed_.get(), x, &beta, y, y,
                                              Workspace(), streams, 1));
  *used = true;
  return Ort::Status{nullptr};
}

#endif  // ONNXSPARSE_WITH_CUSPARSELT

}  // namespace onnxsparse::cuda
