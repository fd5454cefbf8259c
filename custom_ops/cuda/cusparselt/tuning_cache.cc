#include "cuda/cusparselt/tuning_cache.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

namespace onnxsparse::cuda::cusparselt {

const char kCacheHeader[] = "# onnxsparse cuSPARSELt tuning cache v1";
const char kCacheColumns[] = "# cusparselt\tgpu\tsm\tdtype\tm\tn\tk\tldy\tbias\tmax_id\tconfig\tus";

namespace {

constexpr const char* kTypeNames[] = {"float16", "bfloat16", "int8", "int8s", "int8f"};

const char* TypeName(int type) {
  return type >= 0 && type < static_cast<int>(std::size(kTypeNames)) ? kTypeNames[type] : "?";
}

// The type of a name (-1: none).
int TypeOfName(const std::string& name) {
  for (int type = 0; type < static_cast<int>(std::size(kTypeNames)); ++type) {
    if (name == kTypeNames[type]) return type;
  }
  return -1;
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

// mkdir -p.
bool MakeDirectories(const std::string& dir, std::string* why) {
  for (size_t slash = dir.find('/', 1);; slash = dir.find('/', slash + 1)) {
    const std::string prefix = dir.substr(0, slash);
    if (mkdir(prefix.c_str(), 0777) != 0 && errno != EEXIST) {
      const int error = errno;
      struct stat st;
      if (stat(prefix.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {  // an existing one may answer EACCES or EROFS
        *why = "cannot create " + prefix + ": " + std::strerror(error);
        return false;
      }
    }
    if (slash == std::string::npos) return true;
  }
}

}  // namespace

bool CacheKey::operator<(const CacheKey& o) const {
  return std::tie(version, gpu, sm_major, sm_minor, type, m, n, k, ldy, bias, max_id) <
         std::tie(o.version, o.gpu, o.sm_major, o.sm_minor, o.type, o.m, o.n, o.k, o.ldy, o.bias, o.max_id);
}

std::string FormatEntry(const CacheKey& key, const CacheEntry& entry) {
  char us[32];
  std::snprintf(us, sizeof(us), "%.2f", entry.us);
  const auto s = [](auto v) { return std::to_string(v); };
  return s(key.version / 1000) + '.' + s(key.version / 100 % 10) + '.' + s(key.version % 100) + '\t' + key.gpu +
         '\t' + s(key.sm_major) + '.' + s(key.sm_minor) + '\t' + TypeName(key.type) + '\t' + s(key.m) + '\t' +
         s(key.n) + '\t' + s(key.k) + '\t' + s(key.ldy) + '\t' + (key.bias ? "1" : "0") + '\t' + s(key.max_id) +
         '\t' + s(entry.config_id) + '\t' + us;
}

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
      TypeOfName(f[3]) < 0 || !ParseInt(f[4], &m) || !ParseInt(f[5], &n) ||
      !ParseInt(f[6], &k) || !ParseInt(f[7], &ldy) || !ParseInt(f[8], &bias) || !ParseInt(f[9], &max_id) ||
      !ParseInt(f[10], &config)) {
    return false;
  }
  char* end = nullptr;
  const float us = std::strtof(f[11].c_str(), &end);
  const int64_t kIntMax = std::numeric_limits<int>::max();
  if (f[11].empty() || *end != '\0' || !std::isfinite(us) || version[0] < 0 || version[0] > kIntMax / 1000 ||
      version[1] < 0 || version[1] > 9 || version[2] < 0 || version[2] > 99 || sm[0] < 0 || sm[0] > kIntMax ||
      sm[1] < 0 || sm[1] > kIntMax || (bias != 0 && bias != 1) || max_id > kIntMax ||
      !(config >= 0 ? config <= max_id : config == kOwnKernel && max_id == kOwnKernel)) {
    return false;
  }
  key->version = static_cast<int>(version[0] * 1000 + version[1] * 100 + version[2]);
  key->gpu = f[1];
  key->sm_major = static_cast<int>(sm[0]);
  key->sm_minor = static_cast<int>(sm[1]);
  key->type = TypeOfName(f[3]);
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

bool ReplaceFile(const std::string& path, const std::string& text, unsigned serial, std::string* why) {
  const size_t slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0 && !MakeDirectories(path.substr(0, slash), why)) return false;
  const std::string temp = path + ".tmp." + std::to_string(getpid()) + '.' + std::to_string(serial);
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

std::string CachePath(const std::string& option) {
  if (option == "off") return std::string();
  if (!option.empty()) return option;
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  // XDG says a relative XDG_CACHE_HOME is to be ignored.
  if (xdg != nullptr && xdg[0] == '/') return std::string(xdg) + "/onnxsparse/cusparselt_tuning.txt";
  const char* home = std::getenv("HOME");
  if (home != nullptr && *home) return std::string(home) + "/.cache/onnxsparse/cusparselt_tuning.txt";
  return std::string();
}

TuningCacheFile::TuningCacheFile(std::string path) : path_(std::move(path)) {}

void TuningCacheFile::Load() {
  if (!loaded_) {
    if (!path_.empty()) entries_ = ReadCacheFile(path_);
    loaded_ = true;
  }
}

bool TuningCacheFile::Find(const CacheKey& key, CacheEntry* entry) {
  Load();
  auto it = entries_.find(key);
  if (it == entries_.end()) return false;
  *entry = it->second;
  return true;
}

bool TuningCacheFile::FindNearest(const CacheKey& key, CacheKey* found_key, CacheEntry* entry) {
  Load();
  auto log_ratio = [](int64_t a, int64_t b) {
    return std::fabs(std::log(static_cast<double>(a > 0 ? a : 1) / static_cast<double>(b > 0 ? b : 1)));
  };
  double best = std::numeric_limits<double>::infinity();
  for (const CacheEntries* entries : {&tuned_here_, &entries_}) {
    for (const auto& [k, e] : *entries) {
      if (e.config_id < 0 || k.max_id != key.max_id || k.version != key.version || k.gpu != key.gpu ||
          k.sm_major != key.sm_major || k.sm_minor != key.sm_minor || k.type != key.type || k.bias != key.bias ||
          (k.ldy < 0) != (key.ldy < 0)) {
        continue;
      }
      const double distance = log_ratio(k.m, key.m) + 3.0 * (log_ratio(k.n, key.n) + log_ratio(k.k, key.k));
      if (distance < best) {
        best = distance;
        *found_key = k;
        *entry = e;
      }
    }
  }
  return best < std::numeric_limits<double>::infinity();
}

std::vector<CacheKey> TuningCacheFile::Problems(const CacheKey& like) {
  Load();
  std::set<CacheKey> found;
  for (const CacheEntries* entries : {&tuned_here_, &entries_}) {
    for (const auto& [k, e] : *entries) {
      if (e.config_id < 0 || k.version != like.version || k.gpu != like.gpu || k.sm_major != like.sm_major ||
          k.sm_minor != like.sm_minor || k.type != like.type || k.n != like.n || k.k != like.k ||
          k.bias != like.bias) {
        continue;
      }
      found.insert(k);
    }
  }
  return std::vector<CacheKey>(found.begin(), found.end());
}

bool TuningCacheFile::Store(const CacheKey& key, const CacheEntry& entry, std::string* why) {
  tuned_here_[key] = entry;
  if (path_.empty()) return true;
  // Writers (processes, and threads of other processes) take turns on a lock file beside it, so
  // that each merge starts from the last one's file and no entry is lost; readers need no lock
  // (the rename is atomic). A lock that cannot be had (a read-only place, a file system without
  // locks) only risks a lost entry, which the next tuning writes again.
  std::string ignored;
  const size_t slash = path_.rfind('/');
  if (slash != std::string::npos && slash > 0) MakeDirectories(path_.substr(0, slash), &ignored);
  const int lock = open((path_ + ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  if (lock >= 0) {
    while (flock(lock, LOCK_EX) != 0 && errno == EINTR) {
    }
  }
  CacheEntries merged = ReadCacheFile(path_);
  for (const auto& [k, e] : tuned_here_) merged[k] = e;
  std::string text = std::string(kCacheHeader) + '\n' + kCacheColumns + '\n';
  for (const auto& [k, e] : merged) text += FormatEntry(k, e) + '\n';
  const bool written = ReplaceFile(path_, text, writes_++, why);
  if (lock >= 0) close(lock);  // releases the lock
  entries_ = std::move(merged);
  loaded_ = true;
  return written;
}

TuningCacheFile& TuningCacheFor(const std::string& path) {
  static auto* files = new std::map<std::string, std::unique_ptr<TuningCacheFile>>();  // lives as long as the process
  auto& slot = (*files)[path];
  if (!slot) slot = std::make_unique<TuningCacheFile>(path);
  return *slot;
}

}  // namespace onnxsparse::cuda::cusparselt
