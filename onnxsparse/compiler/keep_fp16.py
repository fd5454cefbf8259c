"""Give an fp16 sparse op a neighbour with a CPU fp16 kernel, so that ONNX Runtime keeps it in fp16.

ONNX Runtime's ``InsertCastTransformer`` moves a CPU fp16 node to its float32 kernel when every fp16
input coming from another node, and every reader of its fp16 output, is a node without a CPU fp16
kernel (an "isolated fp16 node", at every optimization level; no session option turns it off).
For a sparse op that means ``Cast(values)`` folded into float32 initializers and the float32 kernel
(docs/semantics.md). Runs after ``FuseActivation``, which has already taken the activations it can.

Rewrite (``S`` a ``MatMulCompress`` or ``Conv2dCompress`` with fp16 ``values``, ``y`` its output):
- ``S(X) -> readers`` -> ``Reshape(S(X), [0, .., 0]) -> readers`` when ``X`` is produced by a node
  that is not known to have a CPU fp16 kernel (``FP16_CPU_OPS``, or another sparse op), no reader
  of ``y`` is known to have one, and ``y`` is no graph output. ``[0] * rank`` copies every dimension
  (``allowzero`` 0), so the Reshape is the identity; ONNX Runtime does not eliminate it (as it does an
  ``Identity``) and runs it as an alias of its input, without a copy. A Reshape where the
  neighbours did have fp16 kernels costs one node dispatch and nothing else.
- Not added when the output's rank is unknown (reported).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..spec import CONV2D_COMPRESS, DOMAIN, MATMUL_COMPRESS, ONNX_DOMAINS
from .graph import ModelGraph, make_constant, producer
from .pipeline import Pass, PassResult

SPARSE_OPS = (CONV2D_COMPRESS, MATMUL_COMPRESS)
# ONNX ops whose CPU kernels take fp16 in ONNX Runtime (data movement over all types) and that its
# optimizer does not remove on their own (Identity is eliminated before the cast insertion).
FP16_CPU_OPS = frozenset({"Reshape", "Transpose", "Concat", "Split", "Slice", "Gather", "Squeeze", "Unsqueeze",
                          "Flatten", "Expand", "Tile", "Cast", "Shape", "Size"})


@dataclass
class KeepFp16Result(PassResult):
    guarded: list[str] = field(default_factory=list)  # the sparse ops that got a Reshape after them
    left: list[tuple[str, str]] = field(default_factory=list)  # (sparse op, why it got none although isolated)


def _is_fp16(tensor: gs.Tensor) -> bool:
    dtype = getattr(tensor, "dtype", None)
    if dtype is None:
        return False
    if isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool):
        return int(dtype) == onnx.TensorProto.FLOAT16
    try:
        return np.dtype(dtype) == np.float16
    except TypeError:
        return False


def _has_fp16_kernel(node: gs.Node) -> bool:
    if node.domain == DOMAIN:
        return True  # the sparse ops and CompressOp take fp16
    return node.domain in ONNX_DOMAINS and node.op in FP16_CPU_OPS


class KeepFp16Kernels(Pass):
    """Put an identity ``Reshape`` after each fp16 sparse op that ONNX Runtime would move to float32."""

    def call(self, graph: ModelGraph) -> KeepFp16Result:
        result = KeepFp16Result(graph=graph, modified=False)
        for scope in graph.scopes().values():
            self._guard(scope, result)
        return result

    @staticmethod
    def _guard(graph, result: KeepFp16Result) -> None:
        outputs = {id(tensor) for tensor in graph.graph.outputs}
        for node in graph.nodes():
            if node.op not in SPARSE_OPS or node.domain != DOMAIN or len(node.inputs) < 2 or not node.outputs:
                continue
            if not _is_fp16(node.inputs[1]):
                continue
            x, y = node.inputs[0], node.outputs[0]
            feeder = producer(x)
            readers = list(y.outputs)
            if feeder is None or _has_fp16_kernel(feeder) or id(y) in outputs or not readers:
                continue
            if any(_has_fp16_kernel(reader) for reader in readers):
                continue
            rank = _output_rank(node)
            if rank is None:
                result.left.append((node.name, "the output's rank is unknown, so no identity Reshape is added"))
                continue
            base = node.name or y.name
            shape = make_constant(graph.unique_name(f"{base}_fp16_shape"), np.zeros(rank, np.int64))
            inner = gs.Variable(graph.unique_name(f"{y.name}_fp16"), dtype=y.dtype, shape=y.shape)
            node.outputs[0] = inner
            reshape = gs.Node("Reshape", name=graph.unique_name(f"{base}_fp16"), inputs=[inner, shape], outputs=[y])
            graph.add_node(reshape, after=node)
            result.guarded.append(node.name)
            result.modified = True


def _output_rank(node: gs.Node) -> int | None:
    if node.op == CONV2D_COMPRESS:
        return 4
    y_shape = node.outputs[0].shape
    if y_shape is not None:
        return len(y_shape)
    a_shape = node.inputs[0].shape
    return None if a_shape is None else max(len(a_shape), 1)
