#include "cuda/cuda_utils.h"

#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace onnxsparse::cuda {

namespace {

using PoolKey = std::pair<int, cudaStream_t>;  // (device, stream): the null stream exists per device

struct StreamPool {
  std::unique_ptr<DeviceBuffer> current;
  std::vector<std::unique_ptr<DeviceBuffer>> retired;  // kept alive for graphs captured earlier
};

}  // namespace

bool InputIsConstant(const OrtKernelInfo* info, size_t input) {
  size_t count = 0;
  if (Ort::GetApi().KernelInfo_GetInputCount(info, &count) != nullptr || input >= count) return false;
  int is_constant = 0;
  const OrtValue* value = nullptr;
  OrtStatus* status = Ort::GetApi().KernelInfoGetConstantInput_tensor(info, input, &is_constant, &value);
  if (status != nullptr) {
    Ort::GetApi().ReleaseStatus(status);
    return false;
  }
  return is_constant != 0 && value != nullptr;
}

int KernelDevice(const OrtKernelInfo* info) {
  if (info == nullptr) return -1;
  const OrtApi& api = Ort::GetApi();
  OrtAllocator* allocator = nullptr;
  OrtStatus* status = api.KernelInfoGetAllocator(info, OrtMemTypeDefault, &allocator);
  if (status != nullptr) {
    api.ReleaseStatus(status);
    return -1;
  }
  int device = -1;
  const OrtMemoryInfo* memory = nullptr;
  status = api.AllocatorGetInfo(allocator, &memory);
  if (status == nullptr) {
    OrtMemoryInfoDeviceType type = OrtMemoryInfoDeviceType_CPU;
    api.MemoryInfoGetDeviceType(memory, &type);
    int id = -1;
    status = api.MemoryInfoGetId(memory, &id);
    if (status == nullptr && type == OrtMemoryInfoDeviceType_GPU) device = id;
  }
  if (status != nullptr) api.ReleaseStatus(status);
  api.ReleaseAllocator(allocator);
  return device;
}

int StreamDevice(cudaStream_t stream, int fallback) {
  if (stream == nullptr) return fallback;
  int device = -1;
  if (cudaStreamGetDevice(stream, &device) != cudaSuccess) {
    cudaGetLastError();  // an older driver: not sticky, but clear it
    return fallback;
  }
  return device;
}

void* StreamScratch(cudaStream_t stream, size_t bytes, cudaError_t* err) {
  static std::mutex mutex;
  static auto* pools = new std::map<PoolKey, StreamPool>();  // lives as long as the process
  int device = 0;
  *err = cudaGetDevice(&device);
  if (*err != cudaSuccess) return nullptr;
  std::lock_guard<std::mutex> lock(mutex);
  StreamPool& pool = (*pools)[PoolKey(device, stream)];
  if (pool.current && pool.current->bytes() >= bytes) return pool.current->get();
  // Grow geometrically so that a sequence of larger shapes allocates few times.
  size_t want = AlignUp(bytes, size_t{1} << 20);
  if (pool.current) {
    want = std::max(want, pool.current->bytes() + pool.current->bytes() / 2);
    pool.retired.push_back(std::move(pool.current));
  }
  auto buffer = std::make_unique<DeviceBuffer>();
  *err = buffer->Allocate(want);
  if (*err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free allocation error
    return nullptr;
  }
  pool.current = std::move(buffer);
  return pool.current->get();
}

}  // namespace onnxsparse::cuda
