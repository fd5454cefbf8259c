"""Evaluate ``CompressOp`` offline, so the saved model holds only compressed initializers.

Rewrite:
- ``CompressOp(W, layout) -> (values, index)`` with W constant (initializer, Constant node, Identity
  chains of either) -> initializers ``values``, ``index`` = ``onnxsparse.format.compress_weight(W, layout)``
  under the same tensor names, so every consumer keeps reading them.

With a ``SpillFile`` (a streaming compile, ``compile_model(..., output=...)``) each pair is appended
to that file as soon as it is made and the initializers refer to it there, so no more than one
weight and its pair are in memory at a time (the dense weight is read from its file by
``graph.constant_array`` and dropped after compression).

Afterwards ``cleanup`` drops the dense weight when no other node uses it; a weight still read by a
dense node (not eligible, or kept dense by the policy) stays. A CompressOp whose input is not
constant is left in the graph and reported. CompressOps inside If/Loop/Scan bodies are folded in
their body (its initializers); local functions are not visited.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper

from .. import format as fmt
from ..errors import OnnxSparseError
from ..spec import COMPRESS_OP, DOMAIN

from .pipeline import Pass, PassResult
from .graph import ModelGraph, constant_array, resolve_constant, set_constant


@dataclass
class FoldedWeight:
    node: str
    source: str
    layout: str
    dense_bytes: int
    compressed_bytes: int
    outputs: tuple[str, str] = ()  # the (values, index) initializers


@dataclass
class FoldResult(PassResult):
    folded: list[FoldedWeight] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)  # (CompressOp node, why not folded)


class SpillFile:
    """An append-only data file for the pairs a streaming compile folds: ``tensor(name, array)``
    writes the array (64-byte aligned) and returns a TensorProto that refers to it by the file's
    absolute path; an array under 1 KiB stays inline, as ``io.save_model`` would keep it. The save
    copies these tensors into the output's data file in the model's order."""

    ALIGN = 64
    INLINE_BELOW = 1024

    def __init__(self, path) -> None:
        self.path = Path(path).resolve()
        self._file = open(self.path, "wb")
        self.offset = 0

    def tensor(self, name: str, array: np.ndarray) -> onnx.TensorProto:
        array = np.ascontiguousarray(array)
        if array.nbytes < self.INLINE_BELOW:
            return onnx.numpy_helper.from_array(array, name)
        pad = (-self.offset) % self.ALIGN
        self._file.write(b"\0" * pad)
        self.offset += pad
        self._file.write(memoryview(array.reshape(-1).view(np.uint8)))
        self._file.flush()
        tensor = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
        for key, value in (("location", str(self.path)), ("offset", str(self.offset)), ("length", str(array.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        tensor.data_location = onnx.TensorProto.EXTERNAL
        self.offset += array.nbytes
        return tensor

    def close(self) -> None:
        self._file.close()


class FoldCompress(Pass):
    """Replace each CompressOp with constant input by its (values, index) initializers
    (appended to ``sink`` when one is given)."""

    def __init__(self, sink: SpillFile | None = None) -> None:
        self.sink = sink

    def call(self, graph: ModelGraph) -> FoldResult:
        result = FoldResult(graph=graph, modified=False)
        for scope in graph.scopes().values():
            folded = len(result.folded)
            self._fold(scope, result, self.sink)
            if scope is graph:  # main-graph pairs stay there, however deep their readers are
                graph.main_initializers |= {name for weight in result.folded[folded:] for name in weight.outputs}
        if result.modified:
            graph.cleanup()
        return result

    @staticmethod
    def _fold(graph, result: FoldResult, sink: SpillFile | None = None) -> None:
        for node in graph.nodes():
            if node.op != COMPRESS_OP or node.domain != DOMAIN:
                continue
            source, why_not = resolve_constant(graph, node.inputs[0])
            if source is None:
                result.left.append((node.name, why_not))
                continue
            layout = node.attrs["layout"]
            dense = constant_array(source.tensor)
            try:
                values, index = fmt.compress_weight(dense, layout)
            except ValueError as exc:  # NotTwoFourError included: the weight was not verified
                raise OnnxSparseError(f"CompressOp '{node.name}': cannot compress '{source.name}': {exc}") from None
            dense_bytes = dense.nbytes
            del dense
            out_values, out_index = node.outputs
            graph.remove_node(node)
            if sink is not None:
                set_constant(out_values, sink.tensor(out_values.name, values))
                set_constant(out_index, sink.tensor(out_index.name, index))
            else:
                set_constant(out_values, values)
                set_constant(out_index, index)
            result.folded.append(FoldedWeight(node.name, source.name, layout, dense_bytes, values.nbytes + index.nbytes,
                                              (out_values.name, out_index.name)))
            del values, index
            result.modified = True
