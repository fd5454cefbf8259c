#include "cuda/cuda_utils.h"

#include <map>
#include <memory>
#include <mutex>
#include <vector>

namespace onnxsparse::cuda {

namespace {

struct StreamPool {
  std::unique_ptr<DeviceBuffer> current;
  std::vector<std::unique_ptr<DeviceBuffer>> retired;  // kept alive for graphs captured earlier
};

}  // namespace

void* StreamScratch(cudaStream_t stream, size_t bytes, cudaError_t* err) {
  static std::mutex mutex;
  static auto* pools = new std::map<cudaStream_t, StreamPool>();  // lives as long as the process
  std::lock_guard<std::mutex> lock(mutex);
  *err = cudaSuccess;
  StreamPool& pool = (*pools)[stream];
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
