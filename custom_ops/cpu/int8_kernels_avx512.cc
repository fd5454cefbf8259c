#include "cpu/int8_kernels.h"
namespace onnxsparse::cpu {
const Int8KernelSet kInt8KernelsAvx512 = {"avx512", nullptr};
}
