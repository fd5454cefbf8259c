// The cuSPARSELt tuning cache file: the configuration chosen per GEMM problem, kept across
// processes (the id sweep costs about 5 s per problem, mostly cusparseLtMatmulPlanInit), like the
// timing caches of other inference engines. Plain C++ (no CUDA, no cuSPARSELt, no ONNX Runtime),
// so it is tested without a GPU (tuning_cache_check.cc, tests/test_cusparselt_tuning_cache.py).
//
// A result holds for one cuSPARSELt version, GPU model (any ordinal) and problem, searched over
// ids 0..max_id: a different safe range may hold a faster id, or forbid the cached one. One entry
// a line, tab-separated (GPU names hold spaces), after a header naming the format:
//   0.8.1  NVIDIA H200  9.0  float16  256  512  512  512  1  35  17  8.53
//   0.8.1  NVIDIA H200  9.0  float16  256  512  512  512  1  -1  -1  9.10   (the own kernel)
// Lines that do not parse (or name an id outside the range searched) are skipped. A write reads
// the file again, merges this process's results over it and replaces it atomically (a temporary
// file renamed over it), so a reader never sees a partial file.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace onnxsparse::cuda::cusparselt {

extern const char kCacheHeader[];
extern const char kCacheColumns[];

// An entry of the own kernel (config and max_id both this): its time per call on all M rows, tuned
// beside cuSPARSELt's configurations of the same problem, so that inference chooses between the
// two from the file (readers of the first format skip such lines).
constexpr int kOwnKernel = -1;

// Element types as the file spells them (ElementType's values): int8 is the int32 product, int8s
// the int8 output scaled in cuSPARSELt's epilogue, int8f the float output scaled there.
enum CacheDtype : int { kCacheFloat16 = 0, kCacheBFloat16 = 1, kCacheInt8 = 2, kCacheInt8Scaled = 3, kCacheInt8Float = 4 };

struct CacheKey {
  int version = 0;  // cuSPARSELt's, major*1000 + minor*100 + patch
  std::string gpu;  // cudaDeviceProp::name, tabs and line breaks made spaces
  int sm_major = 0, sm_minor = 0;
  int type = kCacheFloat16;
  int64_t m = 0, n = 0, k = 0, ldy = 0;
  bool bias = false;
  int max_id = -1;  // the highest configuration id searched
  bool operator<(const CacheKey& o) const;
};
struct CacheEntry {
  int config_id = -1;
  float us = -1.f;  // its time per call when it was tuned
};
using CacheEntries = std::map<CacheKey, CacheEntry>;

// One entry line <-> (key, entry). ParseEntry is false for a comment or a malformed line, and for
// a configuration id outside the range searched (a hand-edited id beyond the safe range could
// stop the CUDA context).
std::string FormatEntry(const CacheKey& key, const CacheEntry& entry);
bool ParseEntry(const std::string& line, CacheKey* key, CacheEntry* entry);

// The entries of the file at `path`: none when it is missing, unreadable or of another format.
CacheEntries ReadCacheFile(const std::string& path);

// Replaces the file at `path` by `text` (creating its directory): written to a temporary file
// beside it, named by process and `serial` so that concurrent writers never share one, then
// renamed over it. False and *why on failure (nothing left behind).
bool ReplaceFile(const std::string& path, const std::string& text, unsigned serial, std::string* why);

// The file for the onnxsparse.cusparselt.cache option: "off" none (""), a path itself, "" the
// default place ($XDG_CACHE_HOME, else ~/.cache: onnxsparse/cusparselt_tuning.txt).
std::string CachePath(const std::string& option);

// One cache file as this process knows it: read at the first lookup, refreshed at each write.
// Not thread-safe: the caller serialises.
class TuningCacheFile {
 public:
  explicit TuningCacheFile(std::string path);
  const std::string& path() const { return path_; }
  bool Find(const CacheKey& key, CacheEntry* entry);
  // For a problem the file lacks: the configuration of the most similar tuned one, of the same
  // cuSPARSELt version, GPU model, element type, bias, searched range and output kind (GEMM or
  // per-image conv, the sign of ldy), nearest in log M, log N and log K with N and K weighted
  // three times M (another M of the same weight first). Own-kernel entries are not candidates.
  // Measured on an H200: cuSPARSELt's default algorithm ran 0.24-0.64x of dense at M >= 128.
  bool FindNearest(const CacheKey& key, CacheKey* found_key, CacheEntry* entry);
  // The problems tuned for a weight like `like` (of this file and of this process): the same
  // cuSPARSELt version, GPU model, element type, N, K and bias, at any M, ldy and searched range;
  // cuSPARSELt's entries only (not the own kernel's). SparseLtWeight::Prepare makes their plans
  // ahead of the first call.
  std::vector<CacheKey> Problems(const CacheKey& like);
  // Records a result tuned by this process and rewrites the file: read again (another process
  // may have added entries since), this process's results merged over it, written atomically.
  // False and *why when the file cannot be written (the result is still kept in memory).
  bool Store(const CacheKey& key, const CacheEntry& entry, std::string* why);

 private:
  void Load();  // reads the file at the first lookup
  std::string path_;  // "" when disabled
  bool loaded_ = false;
  CacheEntries entries_;
  CacheEntries tuned_here_;  // they win over the file's when merged
  unsigned writes_ = 0;
};

// The process's TuningCacheFile for `path` (one per path; never destroyed). Caller serialises.
TuningCacheFile& TuningCacheFor(const std::string& path);

}  // namespace onnxsparse::cuda::cusparselt
