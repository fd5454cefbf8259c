// A small command-line front end of the tuning cache (tuning_cache.h), built with every library
// (CPU-only too), so that tests exercise the file format without a GPU:
//   onnxsparse_tuning_cache_check parse LINE        prints the entry as written back, or "bad"
//   onnxsparse_tuning_cache_check read FILE         prints the entries the file holds
//   onnxsparse_tuning_cache_check store FILE LINE.. stores each entry in turn (one rewrite each)
//   onnxsparse_tuning_cache_check nearest FILE LINE the entry FindNearest borrows for LINE's problem, or "none"
//   onnxsparse_tuning_cache_check problems FILE LINE the problems tuned for LINE's weight (Problems), one a line
// Exit status: 0, 1 when a store could not write the file, 2 for a bad command or entry.
#include <cstdio>
#include <cstring>
#include <string>

#include "cuda/cusparselt/tuning_cache.h"

namespace cache = onnxsparse::cuda::cusparselt;

int main(int argc, char** argv) {
  const std::string command = argc > 1 ? argv[1] : "";
  if (command == "parse" && argc == 3) {
    cache::CacheKey key;
    cache::CacheEntry entry;
    std::puts(cache::ParseEntry(argv[2], &key, &entry) ? cache::FormatEntry(key, entry).c_str() : "bad");
    return 0;
  }
  if (command == "read" && argc == 3) {
    for (const auto& [key, entry] : cache::ReadCacheFile(argv[2])) std::puts(cache::FormatEntry(key, entry).c_str());
    return 0;
  }
  if (command == "nearest" && argc == 4) {
    cache::CacheKey key, found;
    cache::CacheEntry entry;
    if (!cache::ParseEntry(argv[3], &key, &entry)) {
      std::fprintf(stderr, "onnxsparse_tuning_cache_check: not an entry: %s\n", argv[3]);
      return 2;
    }
    cache::TuningCacheFile file(argv[2]);
    std::puts(file.FindNearest(key, &found, &entry) ? cache::FormatEntry(found, entry).c_str() : "none");
    return 0;
  }
  if (command == "problems" && argc == 4) {
    cache::CacheKey key;
    cache::CacheEntry entry;
    if (!cache::ParseEntry(argv[3], &key, &entry)) {
      std::fprintf(stderr, "onnxsparse_tuning_cache_check: not an entry: %s\n", argv[3]);
      return 2;
    }
    cache::TuningCacheFile file(argv[2]);
    for (const cache::CacheKey& found : file.Problems(key)) {
      std::printf("%lld\t%lld\t%d\n", static_cast<long long>(found.m), static_cast<long long>(found.ldy), found.max_id);
    }
    return 0;
  }
  if (command == "store" && argc >= 4) {
    cache::TuningCacheFile& file = cache::TuningCacheFor(argv[2]);
    for (int i = 3; i < argc; ++i) {
      cache::CacheKey key;
      cache::CacheEntry entry;
      if (!cache::ParseEntry(argv[i], &key, &entry)) {
        std::fprintf(stderr, "onnxsparse_tuning_cache_check: not an entry: %s\n", argv[i]);
        return 2;
      }
      std::string why;
      if (!file.Store(key, entry, &why)) {
        std::fprintf(stderr, "onnxsparse_tuning_cache_check: cannot write %s: %s\n", argv[2], why.c_str());
        return 1;
      }
    }
    return 0;
  }
  std::fprintf(stderr, "usage: onnxsparse_tuning_cache_check parse LINE | read FILE | store FILE LINE... | nearest FILE LINE | "
               "problems FILE LINE\n");
  return 2;
}
