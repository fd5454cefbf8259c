// The library's run-time options: one struct, filled once when a session's options register the
// library (RegisterCustomOps), from ONNX Runtime session config entries named `onnxsparse.*`
// (onnxsparse.session_options(cpu_isa="avx2", ...) writes them). The ONNXSPARSE_* environment
// variables are developer overrides read at the same moment: a variable that is set wins over the
// session's entry. An invalid value (not a number, a name not listed, an ISA the processor lacks)
// is an error that fails the registration, hence the session's creation, naming the key.
//
// Kernels read the options of the registration that created them (CurrentKernelContext(), valid
// while ONNX Runtime creates a kernel) and keep a copy; none of them reads the environment.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/ort_api.h"

namespace onnxsparse {

// The CPU kernels' instruction set: chosen from cpuid (kAuto) or forced.
enum class CpuIsaOption { kAuto, kPortable, kAvx2, kAvx512 };

struct RuntimeOptions {
  CpuIsaOption cpu_isa = CpuIsaOption::kAuto;  // onnxsparse.cpu_isa: auto|portable|avx2|avx512
  // CUDA: M above this (fp16/bf16, constant weight) may take cuSPARSELt; at or below, the own kernel.
  int64_t cuda_small_m_max = 32;           // onnxsparse.cuda.small_m_max
  int64_t cuda_own_timed_m_max = 1024;     // onnxsparse.cuda.own_timed_m_max: own vs cuSPARSELt timed up to this M
  bool cuda_pack = true;                   // onnxsparse.cuda.pack: packed weight for the sparse tensor cores
  bool cuda_pdl = true;                    // onnxsparse.cuda.pdl: programmatic dependent launch
  bool cuda_persistent = true;             // onnxsparse.cuda.persistent: own kernel's blocks stream several tiles
  bool cuda_allow_no_cusparselt = false;   // onnxsparse.cuda.allow_no_cusparselt: own kernel when it is missing
  bool cuda_nonfinite = true;              // onnxsparse.cuda.nonfinite: NaN/Inf scan and fix-up (like dense)
  // onnxsparse.cuda.int8_scaled_output: an int8 product's output at M >= 32 scaled (and rounded
  // when quantized) in cuSPARSELt's epilogue where it makes a plan (one pass less; within one step
  // of the contract at rounding ties), else the exact int32 product and the library's epilogue pass.
  bool cuda_int8_scaled_output = true;
  // onnxsparse.cusparselt.tune: kSearch times the configuration ids (and the own kernel) of a problem
  // the tuning cache lacks (onnxsparse tune sets it); kCache (default) takes the cache's choice, else
  // cuSPARSELt's default algorithm and the shipped small-M rule, never searching; kOff: no cache.
  enum CusparseLtTune : int { kTuneOff = 0, kTuneCache = 1, kTuneSearch = 2 };
  int cusparselt_tune = kTuneCache;
  std::string cusparselt_cache;            // onnxsparse.cusparselt.cache: file; "off": none; "": default place
  int cusparselt_max_config_id = kUnsetConfigId;  // onnxsparse.cusparselt.max_config_id (-1: default algorithm)
  std::string cusparselt_library;          // onnxsparse.cusparselt.library: path tried first
  bool log_verbose = false;  // onnxsparse.log_verbose: the per-M choices logged at WARNING (else VERBOSE)
  bool trace = false;        // onnxsparse.trace: tuning and cache lines logged at WARNING (else VERBOSE)

  static constexpr int kUnsetConfigId = -2;

  // Every field as text: registrations with equal options share one set of ops.
  std::string Fingerprint() const;
};

// One option: its session config key, its environment override, and how a value is parsed into
// the struct (returns "" or what is wrong with the value).
struct RuntimeOptionSpec {
  const char* key;
  const char* env;
  const char* help;
  std::function<std::string(const std::string& value, RuntimeOptions* options)> parse;
};
const std::vector<RuntimeOptionSpec>& RuntimeOptionSpecs();

// Fills *out from the session's `onnxsparse.*` entries, then from the environment overrides.
// lookup(key, &value) returns whether the session holds the key. Returns "" or the error.
std::string ReadRuntimeOptions(const std::function<bool(const char*, std::string*)>& lookup, RuntimeOptions* out);

// The same from an OrtSessionOptions (RegisterCustomOps).
Ort::Status RuntimeOptionsFromSession(const OrtApi& api, const OrtSessionOptions* session, RuntimeOptions* out);

// What a kernel being created sees: its registration's options and its OrtKernelInfo.
struct KernelContext {
  const RuntimeOptions* options = nullptr;
  const OrtKernelInfo* info = nullptr;
};
// Valid on the thread that runs ONNX Runtime's CreateKernel of one of this library's ops; outside
// it, the default options and a null info.
KernelContext CurrentKernelContext();

// Sets the thread's kernel context for the lifetime of the object (register.cc).
class ScopedKernelContext {
 public:
  ScopedKernelContext(const RuntimeOptions* options, const OrtKernelInfo* info);
  ~ScopedKernelContext();
  ScopedKernelContext(const ScopedKernelContext&) = delete;
  ScopedKernelContext& operator=(const ScopedKernelContext&) = delete;

 private:
  KernelContext previous_;
};

}  // namespace onnxsparse
