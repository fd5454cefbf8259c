// The library's single entry point: ONNX Runtime calls RegisterCustomOps when a session's options
// register this library. CPU kernels are always present; CUDA kernels join them when the library
// was built with CUDA. Every op is registered under the same name for each execution provider.
#include <memory>
#include <mutex>
#include <vector>

#include "common/ort_api.h"
#include "cpu/ops_cpu.h"
#ifdef ONNXSPARSE_WITH_CUDA
#include "cuda/ops_cuda.h"
#endif

namespace {

constexpr const char* kDomain = "onnxsparse";

// Ops and domains must outlive every session that uses them, so they live as long as the process
// and are never destroyed: the lite ops are derived objects without a virtual destructor, and ONNX
// Runtime may still hold the domains while static destructors run at exit.
std::vector<std::unique_ptr<OrtCustomOp>>& AllOps() {
  static auto* ops = new std::vector<std::unique_ptr<OrtCustomOp>>();
  return *ops;
}

std::vector<Ort::CustomOpDomain>& AllDomains() {
  static auto* domains = new std::vector<Ort::CustomOpDomain>();
  return *domains;
}

std::mutex& RegistryMutex() {
  static std::mutex mutex;
  return mutex;
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
    std::lock_guard<std::mutex> lock(RegistryMutex());
    auto& ops = AllOps();
    if (ops.empty()) {
      onnxsparse::cpu::AppendCpuOps(ops);
#ifdef ONNXSPARSE_WITH_CUDA
      onnxsparse::cuda::AppendCudaOps(ops);
#endif
    }
    Ort::CustomOpDomain domain{kDomain};
    for (auto& op : ops) domain.Add(op.get());
    Ort::UnownedSessionOptions session_options(options);
    session_options.Add(domain);
    AllDomains().push_back(std::move(domain));
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}
