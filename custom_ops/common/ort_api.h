// ONNX Runtime's C++ API as every kernel of this library sees it (initialised manually in
// RegisterCustomOps, so the library can report an ONNX Runtime that is too old).
#pragma once
#ifndef ORT_API_MANUAL_INIT
#define ORT_API_MANUAL_INIT
#endif
#include "onnxruntime_cxx_api.h"
#include "onnxruntime_lite_custom_op.h"
