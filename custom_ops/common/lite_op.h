// CreateLiteCustomOp with two holes of ONNX Runtime's lite custom-op wrapper (1.21 headers) closed:
// - an optional input spelled "" (present in the node's input list, but absent) makes the wrapper
//   build a Tensor from a null OrtValue and crash; trailing absent inputs are therefore dropped
//   from the kernel's input count when it is created, so the wrapper passes an empty optional;
// - an absent required input (or an exception of the wrapper itself) becomes an error status
//   whose message starts with the op's name, never a crash or an exception into ONNX Runtime.
// The kernel struct names its first optional input with `static constexpr size_t kFirstOptionalInput`.
#pragma once
#include <cstddef>
#include <string>

#include "common/ort_api.h"
#include "common/status.h"

namespace onnxsparse {

template <typename Kernel>
class GuardedLiteOp {
 public:
  static OrtCustomOp* Create(const char* op_name, const char* execution_provider) {
    Ort::Custom::OrtLiteCustomOp* op = Ort::Custom::CreateLiteCustomOp<Kernel>(op_name, execution_provider);
    LiteCreate() = op->CreateKernel;
    LiteCompute() = op->KernelComputeV2;
    op->CreateKernel = &CreateKernel;
    op->KernelComputeV2 = &Compute;
    return op;
  }

 private:
  using Lite = Ort::Custom::OrtLiteCustomStruct<Kernel>;
  using CreateFn = void* (*)(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*);
  using ComputeFn = OrtStatusPtr (*)(void*, OrtKernelContext*);

  static CreateFn& LiteCreate() {
    static CreateFn fn = nullptr;
    return fn;
  }
  static ComputeFn& LiteCompute() {
    static ComputeFn fn = nullptr;
    return fn;
  }

  static bool InputIsAbsent(const OrtApi* api, const OrtKernelInfo* info, size_t i) {
    size_t size = 0;
    OrtStatus* status = api->KernelInfo_GetInputName(info, i, nullptr, &size);
    if (status != nullptr) {
      api->ReleaseStatus(status);
      return false;
    }
    return size <= 1;  // just the terminating NUL: the node spelled this input ""
  }

  static void* CreateKernel(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info) {
    void* created = LiteCreate()(op, api, info);
    auto* kernel = static_cast<typename Lite::Kernel*>(created);
    while (kernel->num_input_ > Kernel::kFirstOptionalInput && InputIsAbsent(api, info, kernel->num_input_ - 1)) {
      --kernel->num_input_;
    }
    return created;
  }

  static OrtStatusPtr Compute(void* op_kernel, OrtKernelContext* context) {
    auto* kernel = static_cast<typename Lite::Kernel*>(op_kernel);
    const OrtApi& api = Ort::GetApi();
    for (size_t i = 0; i < kernel->num_input_; ++i) {
      const OrtValue* value = nullptr;
      OrtStatus* status = api.KernelContext_GetInput(context, i, &value);
      if (status != nullptr) api.ReleaseStatus(status);
      if (status != nullptr || value == nullptr) {
        return InvalidArgument(Kernel::kOpName, StrCat("input ", i, " is missing")).release();
      }
    }
    if (kernel->num_input_ < Kernel::kFirstOptionalInput) {
      return InvalidArgument(Kernel::kOpName, StrCat("needs at least ", Kernel::kFirstOptionalInput,
                                                     " inputs, got ", kernel->num_input_))
          .release();
    }
    try {
      return LiteCompute()(op_kernel, context);
    } catch (const Ort::Exception& e) {
      return Ort::Status((std::string(Kernel::kOpName) + ": " + e.what()).c_str(), e.GetOrtErrorCode()).release();
    } catch (const std::exception& e) {
      return RuntimeError(Kernel::kOpName, e.what()).release();
    } catch (...) {
      return RuntimeError(Kernel::kOpName, "unknown error").release();
    }
  }
};

}  // namespace onnxsparse
