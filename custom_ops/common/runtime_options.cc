#include "common/runtime_options.h"

#include <strings.h>

#include <cerrno>
#include <cstdlib>
#include <limits>

#include "common/status.h"

namespace onnxsparse {

namespace {

// A whole decimal integer within [low, high]; "" or the complaint.
std::string ParseInteger(const std::string& text, int64_t low, int64_t high, int64_t* out) {
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || errno != 0 || *end != '\0') return StrCat("'", text, "' is not an integer");
  if (value < low || value > high) return StrCat(value, " is out of range [", low, ", ", high, "]");
  *out = value;
  return "";
}

// 1/0, true/false, on/off, yes/no (any case); any other integer: nonzero is true.
std::string ParseBool(const std::string& text, bool* out) {
  for (const char* yes : {"1", "true", "on", "yes"}) {
    if (strcasecmp(text.c_str(), yes) == 0) return *out = true, "";
  }
  for (const char* no : {"0", "false", "off", "no"}) {
    if (strcasecmp(text.c_str(), no) == 0) return *out = false, "";
  }
  int64_t value = 0;
  if (ParseInteger(text, std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(), &value).empty()) {
    return *out = value != 0, "";
  }
  return StrCat("'", text, "' is not a boolean (1/0, true/false, on/off)");
}

constexpr int64_t kMaxM = std::numeric_limits<int32_t>::max();

auto IntField(int64_t RuntimeOptions::*field, int64_t low, int64_t high) {
  return [=](const std::string& text, RuntimeOptions* o) { return ParseInteger(text, low, high, &(o->*field)); };
}
auto BoolField(bool RuntimeOptions::*field) {
  return [=](const std::string& text, RuntimeOptions* o) { return ParseBool(text, &(o->*field)); };
}

const char* CpuIsaText(CpuIsaOption isa) {
  switch (isa) {
    case CpuIsaOption::kAuto: return "auto";
    case CpuIsaOption::kPortable: return "portable";
    case CpuIsaOption::kAvx2: return "avx2";
    case CpuIsaOption::kAvx512: return "avx512";
  }
  return "?";
}

thread_local KernelContext current_context;

}  // namespace

const std::vector<RuntimeOptionSpec>& RuntimeOptionSpecs() {
  static const auto* specs = new std::vector<RuntimeOptionSpec>{
      {"onnxsparse.cpu_isa", "ONNXSPARSE_CPU_ISA", "auto, portable, avx2 or avx512",
       [](const std::string& text, RuntimeOptions* o) -> std::string {
         for (CpuIsaOption isa : {CpuIsaOption::kAuto, CpuIsaOption::kPortable, CpuIsaOption::kAvx2,
                                  CpuIsaOption::kAvx512}) {
           if (text == CpuIsaText(isa)) return o->cpu_isa = isa, "";
         }
         return StrCat("'", text, "' is not an instruction set this library knows");
       }},
      {"onnxsparse.cuda.small_m_max", "ONNXSPARSE_CUDA_SMALL_M_MAX", "an M (>= 0)",
       IntField(&RuntimeOptions::cuda_small_m_max, 0, kMaxM)},
      {"onnxsparse.cuda.own_timed_m_max", "ONNXSPARSE_CUDA_OWN_TIMED_M_MAX", "an M (>= 0)",
       IntField(&RuntimeOptions::cuda_own_timed_m_max, 0, kMaxM)},
      {"onnxsparse.cuda.pack", "ONNXSPARSE_CUDA_PACK", "a boolean", BoolField(&RuntimeOptions::cuda_pack)},
      {"onnxsparse.cuda.pdl", "ONNXSPARSE_CUDA_PDL", "a boolean", BoolField(&RuntimeOptions::cuda_pdl)},
      {"onnxsparse.cuda.persistent", "ONNXSPARSE_CUDA_PERSISTENT", "a boolean",
       BoolField(&RuntimeOptions::cuda_persistent)},
      {"onnxsparse.cuda.allow_no_cusparselt", "ONNXSPARSE_CUDA_ALLOW_NO_CUSPARSELT", "a boolean",
       BoolField(&RuntimeOptions::cuda_allow_no_cusparselt)},
      {"onnxsparse.cuda.nonfinite", "ONNXSPARSE_CUDA_NONFINITE", "a boolean",
       BoolField(&RuntimeOptions::cuda_nonfinite)},
      {"onnxsparse.cuda.int8_scaled_output", "ONNXSPARSE_CUDA_INT8_SCALED_OUTPUT", "a boolean",
       BoolField(&RuntimeOptions::cuda_int8_scaled_output)},
      {"onnxsparse.cusparselt.tune", "ONNXSPARSE_CUSPARSELT_TUNE", "search, cache or off",
       [](const std::string& text, RuntimeOptions* o) -> std::string {
         if (strcasecmp(text.c_str(), "search") == 0) return o->cusparselt_tune = RuntimeOptions::kTuneSearch, "";
         if (strcasecmp(text.c_str(), "cache") == 0) return o->cusparselt_tune = RuntimeOptions::kTuneCache, "";
         bool on = false;  // the boolean spellings: on = search (the former meaning), off = off
         if (!ParseBool(text, &on).empty()) return StrCat("'", text, "' is not search, cache or off");
         o->cusparselt_tune = on ? RuntimeOptions::kTuneSearch : RuntimeOptions::kTuneOff;
         return "";
       }},
      {"onnxsparse.cusparselt.cache", "ONNXSPARSE_CUSPARSELT_CACHE", "a file path, or off",
       [](const std::string& text, RuntimeOptions* o) -> std::string {
         if (text.empty()) return "an empty path (use off for no cache file)";
         o->cusparselt_cache = text == "0" || strcasecmp(text.c_str(), "off") == 0 ? std::string("off") : text;
         return "";
       }},
      {"onnxsparse.cusparselt.max_config_id", "ONNXSPARSE_CUSPARSELT_MAX_CONFIG_ID",
       "the highest configuration id to time (-1: cuSPARSELt's default algorithm only)",
       [](const std::string& text, RuntimeOptions* o) -> std::string {
         int64_t value = 0;
         std::string error = ParseInteger(text, -1, 100000, &value);
         if (error.empty()) o->cusparselt_max_config_id = static_cast<int>(value);
         return error;
       }},
      {"onnxsparse.cusparselt.library", "ONNXSPARSE_CUSPARSELT_LIBRARY", "a path of libcusparseLt.so.0",
       [](const std::string& text, RuntimeOptions* o) -> std::string {
         if (text.empty()) return "an empty path";
         o->cusparselt_library = text;
         return "";
       }},
      {"onnxsparse.log_verbose", "ONNXSPARSE_CUDA_VERBOSE", "a boolean", BoolField(&RuntimeOptions::log_verbose)},
      {"onnxsparse.trace", "ONNXSPARSE_CUDA_TRACE", "a boolean", BoolField(&RuntimeOptions::trace)},
  };
  return *specs;
}

std::string RuntimeOptions::Fingerprint() const {
  return StrCat(CpuIsaText(cpu_isa), '|', cuda_small_m_max, '|', cuda_own_timed_m_max, '|', cuda_pack, '|', cuda_pdl,
                '|', cuda_persistent, '|', cuda_allow_no_cusparselt, '|', cuda_nonfinite, '|', cuda_int8_scaled_output, '|', cusparselt_tune, '|', cusparselt_cache, '|',
                cusparselt_max_config_id, '|', cusparselt_library, '|', log_verbose, '|', trace);
}

std::string ReadRuntimeOptions(const std::function<bool(const char*, std::string*)>& lookup, RuntimeOptions* out) {
  RuntimeOptions options;
  for (const RuntimeOptionSpec& spec : RuntimeOptionSpecs()) {
    std::string value;
    if (lookup(spec.key, &value)) {
      std::string error = spec.parse(value, &options);
      if (!error.empty()) return StrCat("session config entry ", spec.key, ": ", error, " (expected ", spec.help, ")");
    }
    // The developer override: a variable that is set (and not empty) wins.
    const char* env = std::getenv(spec.env);
    if (env != nullptr && *env != '\0') {
      std::string error = spec.parse(env, &options);
      if (!error.empty()) {
        return StrCat("environment variable ", spec.env, " (overrides ", spec.key, "): ", error, " (expected ",
                      spec.help, ")");
      }
    }
  }
  *out = options;
  return "";
}

Ort::Status RuntimeOptionsFromSession(const OrtApi& api, const OrtSessionOptions* session, RuntimeOptions* out) {
  OrtStatus* failure = nullptr;
  auto lookup = [&](const char* key, std::string* value) -> bool {
    if (failure != nullptr) return false;
    int has = 0;
    if ((failure = api.HasSessionConfigEntry(session, key, &has)) != nullptr || has == 0) return false;
    size_t size = 0;
    if ((failure = api.GetSessionConfigEntry(session, key, nullptr, &size)) != nullptr) return false;
    std::string text(size, '\0');
    if ((failure = api.GetSessionConfigEntry(session, key, text.data(), &size)) != nullptr) return false;
    text.resize(size > 0 ? size - 1 : 0);  // size counts the terminating NUL
    *value = text;
    return true;
  };
  std::string error = ReadRuntimeOptions(lookup, out);
  if (failure != nullptr) return Ort::Status(failure);
  if (!error.empty()) return Ort::Status(("onnxsparse: " + error).c_str(), ORT_INVALID_ARGUMENT);
  return Ort::Status{nullptr};
}

KernelContext CurrentKernelContext() {
  static const RuntimeOptions defaults;
  KernelContext context = current_context;
  if (context.options == nullptr) context.options = &defaults;
  return context;
}

ScopedKernelContext::ScopedKernelContext(const RuntimeOptions* options, const OrtKernelInfo* info)
    : previous_(current_context) {
  current_context = KernelContext{options, info};
}

ScopedKernelContext::~ScopedKernelContext() { current_context = previous_; }

}  // namespace onnxsparse
