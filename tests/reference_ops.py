"""Python reference implementations of onnxsparse's ops for ``onnx.reference.ReferenceEvaluator``.

Independent of the C++ kernels: the weight is decoded with ``onnxsparse.format.decompress`` and
the product computed in numpy (Conv by ONNX's own reference implementation), in fp32 for every
dtype and rounded once to the output dtype, as DEVELOPERS.md specifies for fp16/bf16.

    ReferenceEvaluator(model, new_ops=REFERENCE_OPS).run(None, feeds)
"""

from __future__ import annotations

import numpy as np
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_conv import _conv_implementation

from onnxsparse import format as fmt


def _dense_rows_k(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The [rows, K] matrix (fp32) that the compressed pair encodes."""
    return fmt.decompress(values.astype(np.float32), index)


class CompressOp(OpRun):
    op_domain = "onnxsparse"

    def _run(self, weight, layout=None):
        values, index = fmt.compress_weight(weight, layout)
        return values, index


class MatMulCompress(OpRun):
    op_domain = "onnxsparse"

    def _run(self, a, values, index, bias=None, alpha=None, transA=None):
        w = _dense_rows_k(values, index).T  # [K, N]
        a32 = a.astype(np.float32)
        if transA:
            if a.ndim != 2:
                raise ValueError(f"MatMulCompress: transA=1 needs a rank-2 A, got {a.shape}")
            a32 = a32.T
        y = np.matmul(a32, w)
        if alpha is not None:
            y = np.float32(alpha) * y
        if bias is not None:
            y = y + bias.astype(np.float32)
        return (y.astype(a.dtype),)


class Conv2dCompress(OpRun):
    op_domain = "onnxsparse"

    def _run(self, x, values, index, b=None, kernel_shape=None, strides=None, pads=None,
             dilations=None, group=None, auto_pad=None):
        kh, kw = kernel_shape
        rows_k = _dense_rows_k(values, index)
        oc, k = rows_k.shape
        w = fmt.from_rows_k(rows_k, "oihw", (oc, k // (kh * kw), kh, kw))
        y = _conv_implementation(
            x.astype(np.float32),
            w,
            None if b is None else b.astype(np.float32),
            auto_pad or "NOTSET",
            dilations or [1, 1],
            group or 1,
            [kh, kw],
            pads if pads is not None else ([0, 0, 0, 0] if (auto_pad or "NOTSET") == "NOTSET" else None),
            strides or [1, 1],
        )
        return (y.astype(x.dtype),)


REFERENCE_OPS = [CompressOp, MatMulCompress, Conv2dCompress]


def run_reference(model, feeds: dict) -> list[np.ndarray]:
    """Run a model (compiled or not) with the reference evaluator and these ops."""
    return ReferenceEvaluator(model, new_ops=REFERENCE_OPS).run(None, feeds)
