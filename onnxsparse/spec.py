"""What SPEC fixes, as constants: the custom-op domain, its ops, the IR cap, the layers and dtypes.

A leaf: it imports nothing of onnxsparse, so every layer above (format, compiler, pruner, runtime,
front door) reads the same facts from here.
"""

from __future__ import annotations

DOMAIN = "onnxsparse"
OPSET_VERSION = 1

# The ops of the onnxsparse domain.
COMPRESS_OP = "CompressOp"
MATMUL_COMPRESS = "MatMulCompress"
CONV2D_COMPRESS = "Conv2dCompress"
SPARSE_OPS = (MATMUL_COMPRESS, CONV2D_COMPRESS)
# The int8 variants (quantized models; docs/ops.md "int8 ops"): int8 values, SPEC's index.
QMATMUL_COMPRESS = "QMatMulCompress"
QCONV2D_COMPRESS = "QConv2dCompress"
QUANT_SPARSE_OPS = (QMATMUL_COMPRESS, QCONV2D_COMPRESS)

# Models must load in the ONNX Runtime versions the project supports (1.21 and newer); onnx 1.23
# writes IR 14 by default, which they do not read. IR 10 covers every op and type we emit.
MAX_IR_VERSION = 10

# ONNX's own domain as a node may spell it (graphsurgeon gives None when the field is unset).
ONNX_DOMAINS = ("", "ai.onnx", None)

# The ops whose constant weight may be 2:4 (the layers), and the weight layouts of SPEC
# (onnxsparse.format): MatMul W [K, N] is "kn"; Gemm B is "nk" with transB=1, else "kn";
# a 2-D Conv W [OC, C/group, KH, KW] is "oihw". Groups of 4 run along the reduction axis K.
TARGET_OPS = ("Conv", "MatMul", "Gemm")
LAYOUTS = ("kn", "nk", "oihw")


def weight_layout(op: str, trans_b: bool = False) -> str:
    """The layout of a layer's weight: "kn", "nk" or "oihw"."""
    if op == "Conv":
        return "oihw"
    return "nk" if op == "Gemm" and trans_b else "kn"


# Weight element types: ONNX's lower-case name -> (TensorProto data type, bytes per element,
# whether the sparse kernels exist for it). The pruner accepts every float type here; the
# compiler rewrites only those with kernels.
WEIGHT_DTYPES = {
    "float": (1, 4, True),
    "float16": (10, 2, True),
    "bfloat16": (16, 2, True),
    "double": (11, 8, False),
}
SUPPORTED_DTYPES = tuple(name for name, (_, _, kernels) in WEIGHT_DTYPES.items() if kernels)
FLOAT_DATA_TYPES = frozenset(data_type for data_type, _, _ in WEIGHT_DTYPES.values())


def itemsize(dtype: str) -> int:
    """Bytes per element of a weight dtype ("float32" also names "float")."""
    return WEIGHT_DTYPES["float" if dtype == "float32" else dtype][1]
