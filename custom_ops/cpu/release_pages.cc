#include "cpu/release_pages.h"

#include <cstdio>
#include <cstring>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "cpu/constant_weight.h"

namespace onnxsparse::cpu {

#if defined(__linux__)
namespace {

// The smaps entry of the mapping that holds [begin, end): whether it is a file mapping (a path that
// is not a [pseudo] name, a non-zero inode) and its Private_Dirty size. False when no one mapping
// holds the whole range.
bool CleanFileMapping(uintptr_t begin, uintptr_t end) {
  FILE* file = std::fopen("/proc/self/smaps", "r");
  if (file == nullptr) return false;
  char line[4096];
  bool inside = false, file_backed = false, clean = false, found = false;
  while (std::fgets(line, sizeof(line), file) != nullptr) {
    unsigned long start = 0, stop = 0, offset = 0, inode = 0;
    char perms[8] = {0}, dev[32] = {0};
    int path_at = 0;
    if (std::sscanf(line, "%lx-%lx %7s %lx %31s %lu %n", &start, &stop, perms, &offset, dev, &inode, &path_at) >= 6 &&
        std::strchr(line, '-') != nullptr && std::strchr(line, ':') != nullptr && line[0] != ' ' &&
        std::strncmp(line, "Private", 7) != 0) {
      if (inside) break;  // the next mapping's header: the one we wanted is complete
      if (start <= begin && end <= stop) {
        inside = true;
        const char* path = path_at > 0 ? line + path_at : "";
        file_backed = inode != 0 && path[0] == '/' && perms[0] == 'r';
      }
      continue;
    }
    unsigned long kb = 0;
    if (inside && std::sscanf(line, "Private_Dirty: %lu kB", &kb) == 1) {
      clean = kb == 0;
      found = true;
    }
  }
  std::fclose(file);
  return inside && file_backed && found && clean;
}

}  // namespace

size_t ReleaseFileBackedPages(const void* data, size_t bytes) {
  const long page_size = sysconf(_SC_PAGESIZE);
  if (data == nullptr || page_size <= 0) return 0;
  const uintptr_t page = static_cast<uintptr_t>(page_size);
  const uintptr_t first = reinterpret_cast<uintptr_t>(data);
  const uintptr_t begin = (first + page - 1) / page * page;  // whole pages inside the range only
  const uintptr_t end = (first + bytes) / page * page;
  if (end <= begin) return 0;
  if (!CleanFileMapping(first, first + bytes)) return 0;
  if (madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED) != 0) return 0;
  return end - begin;
}
#else
size_t ReleaseFileBackedPages(const void*, size_t) { return 0; }
#endif

size_t ReleaseConstantInputs(const OrtKernelInfo* info, size_t first, size_t last) {
  size_t released = 0;
  for (size_t input = first; input <= last; ++input) {
    const OrtValue* value = detail::ConstantInput(info, input);
    if (value == nullptr) continue;
    Ort::ConstValue tensor(value);
    const auto type = tensor.GetTensorTypeAndShapeInfo();
    size_t element = 0;
    switch (type.GetElementType()) {
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: element = 4; break;
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16:
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: element = 2; break;
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: element = 1; break;
      default: continue;
    }
    released += ReleaseFileBackedPages(tensor.GetTensorRawData(), type.GetElementCount() * element);
  }
  return released;
}

}  // namespace onnxsparse::cpu
