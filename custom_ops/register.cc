// The library's single entry point: ONNX Runtime calls RegisterCustomOps when a session's options
// register this library. CPU kernels are always present; CUDA kernels join them when the library
// was built with CUDA. Every op is registered under the same name for each execution provider.
//
// The session's `onnxsparse.*` config entries (and their environment overrides) are read here,
// once per registration, into a RuntimeOptions (common/runtime_options.h); an invalid one fails
// the registration. Registrations with equal options share one set of ops, and each op hands its
// options to the kernels it creates (CurrentKernelContext while ONNX Runtime creates a kernel).
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/ort_api.h"
#include "common/runtime_options.h"
#include "cpu/cpu_isa.h"
#include "cpu/ops_cpu.h"
#ifdef ONNXSPARSE_WITH_CUDA
#include "cuda/ops_cuda.h"
#endif

namespace {

constexpr const char* kDomain = "onnxsparse";

using CreateKernelFn = void*(ORT_API_CALL*)(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*);

// One set of ops for one set of options. Ops, options and domains must outlive every session that
// uses them, so they live as long as the process and are never destroyed: the lite ops are derived
// objects without a virtual destructor, and ONNX Runtime may still hold the domains while static
// destructors run at exit.
struct OpSet {
  onnxsparse::RuntimeOptions options;
  std::vector<std::unique_ptr<OrtCustomOp>> ops;
};

struct Registry {
  std::mutex mutex;
  std::map<std::string, std::unique_ptr<OpSet>> op_sets;  // by RuntimeOptions::Fingerprint()
  std::vector<Ort::CustomOpDomain> domains;
  // Per op: the lite wrapper's CreateKernel and the options its kernels get. Written before the op
  // is handed to ONNX Runtime, read-only afterwards (under the mutex all the same).
  std::map<const OrtCustomOp*, std::pair<CreateKernelFn, const onnxsparse::RuntimeOptions*>> creators;
};

Registry& TheRegistry() {
  static auto* registry = new Registry();
  return *registry;
}

void* ORT_API_CALL CreateKernelWithOptions(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info) {
  Registry& registry = TheRegistry();
  CreateKernelFn create = nullptr;
  const onnxsparse::RuntimeOptions* options = nullptr;
  {
    std::lock_guard<std::mutex> lock(registry.mutex);
    auto it = registry.creators.find(op);
    if (it == registry.creators.end()) return nullptr;
    create = it->second.first;
    options = it->second.second;
  }
  onnxsparse::ScopedKernelContext context(options, info);
  return create(op, api, info);
}

// The ops for `options`, made at the first registration with these options. Registry mutex held.
OpSet& OpsFor(Registry& registry, const onnxsparse::RuntimeOptions& options) {
  auto& slot = registry.op_sets[options.Fingerprint()];
  if (!slot) {
    auto set = std::make_unique<OpSet>();
    set->options = options;
    onnxsparse::cpu::AppendCpuOps(set->ops);
#ifdef ONNXSPARSE_WITH_CUDA
    onnxsparse::cuda::AppendCudaOps(set->ops);
#endif
    for (auto& op : set->ops) {
      registry.creators[op.get()] = {op->CreateKernel, &set->options};
      op->CreateKernel = &CreateKernelWithOptions;
    }
    slot = std::move(set);
  }
  return *slot;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    const OrtApi* oldest = api_base->GetApi(1);
    return oldest->CreateStatus(ORT_FAIL,
                                "onnxsparse: this ONNX Runtime is older than the API the library was built "
                                "for (needs ONNX Runtime 1.21 or newer)");
  }
  Ort::InitApi(api);
  try {
    onnxsparse::RuntimeOptions runtime;
    Ort::Status read = onnxsparse::RuntimeOptionsFromSession(*api, options, &runtime);
    if (!read.IsOK()) return read.release();
    if (std::string error = onnxsparse::cpu::CheckCpuIsaOption(runtime.cpu_isa); !error.empty()) {
      return api->CreateStatus(ORT_INVALID_ARGUMENT, ("onnxsparse: " + error).c_str());
    }
    Registry& registry = TheRegistry();
    std::lock_guard<std::mutex> lock(registry.mutex);
    OpSet& set = OpsFor(registry, runtime);
    Ort::CustomOpDomain domain{kDomain};
    for (auto& op : set.ops) domain.Add(op.get());
    Ort::UnownedSessionOptions session_options(options);
    session_options.Add(domain);
    registry.domains.push_back(std::move(domain));
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
