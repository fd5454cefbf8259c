"""Evaluate ``CompressOp`` offline, so the saved model holds only compressed initializers.

Rewrite:
- ``CompressOp(W, layout) -> (values, index)`` with W constant (initializer, Constant node, Identity
  chains of either) -> initializers ``values``, ``index`` = ``onnxsparse.format.compress_weight(W, layout)``
  under the same tensor names, so every consumer keeps reading them.

With ``DeferredPairs`` (a streaming compile, ``compile_model(..., output=...)``) a weight of 1 MiB or
more is not compressed when it is folded: its pair becomes two placeholder initializers (their
shapes and types, and where the dense weight is), and the save computes the pair when it reaches
the placeholders in the model's order, writing it straight into the output's data file. No pair is
held longer than its write (its buffer then serves the next weights: up to ``POOL`` of them are
kept) and none is written twice; the dense weight is read (mapped from its file by
``graph.constant_array``) once, then, and dropped.

Afterwards ``cleanup`` drops the dense weight when no other node uses it; a weight still read by a
dense node (not eligible, or kept dense by the policy) stays. A CompressOp whose input is not
constant is left in the graph and reported. CompressOps inside If/Loop/Scan bodies are folded in
their body (its initializers); local functions are not visited.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from .. import format as fmt
from ..errors import OnnxSparseError
from ..spec import COMPRESS_OP, DOMAIN

from .pipeline import Pass, PassResult
from .graph import ModelGraph, constant_array, np_dtype, resolve_constant, set_constant, tensor_array


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


class DeferredPairs:
    """The pairs a streaming compile leaves to the save (see the module's docstring).

    ``placeholders`` returns the (values, index) TensorProtos of a weight: external data at a
    location no file has (``owns`` tells them apart); ``chunks(tensor)`` computes the pair on the
    first request of either half and yields that half's bytes; the other half is kept until it is
    asked for (the export puts them side by side)."""

    PREFIX = "onnxsparse-deferred:"
    MIN_BYTES = 1 << 20  # smaller weights are compressed at once, as in memory
    INLINE_BELOW = 1024  # io.save_model keeps tensors under this size in the model file

    POOL = 2  # output buffers kept for the next weights (the last pairs written)

    def __init__(self) -> None:
        self._sources: dict[str, tuple] = {}  # placeholder location -> (dense TensorProto, layout)
        self._kept: dict[str, tuple] = {}  # the half of a computed pair not written yet, and its buffer
        self._free: list[np.ndarray] = []  # byte buffers of written pairs, reused for the next ones

    def placeholders(self, source: onnx.TensorProto, layout: str, names: tuple[str, str]):
        shape = tuple(int(d) for d in source.dims)
        k = fmt.reduction_length(shape, layout)
        rows = shape[1] if layout == "kn" else shape[0]
        itemsize = np_dtype(source.data_type).itemsize
        halves = ((names[0], source.data_type, (rows, k // 2), rows * (k // 2) * itemsize),
                  (names[1], onnx.TensorProto.UINT8, (rows, (k + 7) // 8), rows * ((k + 7) // 8)))
        if any(length < self.INLINE_BELOW for *_, length in halves):
            return None  # a half the save keeps inline: compress at once
        pair = []
        for name, data_type, dims, length in halves:
            tensor = onnx.TensorProto(name=name, data_type=data_type, dims=dims)
            for key, value in (("location", f"{self.PREFIX}{name}"), ("offset", "0"), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.data_location = onnx.TensorProto.EXTERNAL
            self._sources[f"{self.PREFIX}{name}"] = (source, layout, names)
            pair.append(tensor)
        return pair

    def owns(self, tensor: onnx.TensorProto) -> bool:
        return tensor.data_location == onnx.TensorProto.EXTERNAL and any(
            entry.key == "location" and entry.value.startswith(self.PREFIX) for entry in tensor.external_data)

    def chunks(self, tensor: onnx.TensorProto, chunk: int = 16 << 20):
        location = next(entry.value for entry in tensor.external_data if entry.key == "location")
        name = location[len(self.PREFIX):]
        kept = self._kept.pop(name, None)
        if kept is None:
            source, layout, names = self._sources[location]
            dense = tensor_array(source)
            buffer, out = self._buffers(dense.shape, layout, dense.dtype)
            try:
                values, index = fmt.compress_weight(dense, layout, out=out)
            except ValueError as exc:
                raise OnnxSparseError(f"cannot compress '{source.name}': {exc}") from None
            del dense
            holder = [buffer, 2]  # the pair's buffer and how many halves are still to be written
            pair = dict(zip(names, ((values, holder), (index, holder))))
            array, holder = pair.pop(name)
            self._kept.update(pair)
        else:
            array, holder = kept
        data = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
        for start in range(0, len(data), chunk):
            yield data[start:start + chunk]
        del data, array
        holder[1] -= 1
        if holder[1] == 0:  # both halves are in the file: the buffer serves the next weight
            self._free = [holder[0], *self._free][:self.POOL]

    def _buffers(self, shape: tuple[int, ...], layout: str, dtype: np.dtype):
        """A byte buffer (a free one when big enough) and the (values, index) arrays in it."""
        k = fmt.reduction_length(shape, layout)
        rows = shape[1] if layout == "kn" else shape[0]
        value_bytes = rows * (k // 2) * dtype.itemsize
        aligned = -(-value_bytes // 64) * 64
        need = aligned + rows * ((k + 7) // 8) + 64
        buffer = next((b for b in self._free if b.nbytes >= need), None)
        if buffer is None:
            buffer = np.empty(need, np.uint8)
        else:
            self._free.remove(buffer)
        base = (-buffer.ctypes.data) % 64
        values = buffer[base:base + value_bytes].view(dtype).reshape(rows, k // 2)
        index = buffer[base + aligned:base + aligned + rows * ((k + 7) // 8)].reshape(rows, (k + 7) // 8)
        return buffer, (values, index)


class FoldCompress(Pass):
    """Replace each CompressOp with constant input by its (values, index) initializers
    (placeholders of ``sink`` for large weights when one is given)."""

    def __init__(self, sink: DeferredPairs | None = None) -> None:
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
    def _fold(graph, result: FoldResult, sink: DeferredPairs | None = None) -> None:
        for node in graph.nodes():
            if node.op != COMPRESS_OP or node.domain != DOMAIN:
                continue
            source, why_not = resolve_constant(graph, node.inputs[0])
            if source is None:
                result.left.append((node.name, why_not))
                continue
            layout = node.attrs["layout"]
            out_values, out_index = node.outputs
            proto = source.proto()
            dense_bytes = int(np.prod(proto.dims, dtype=np.int64)) * np_dtype(proto.data_type).itemsize
            deferred = None
            if sink is not None and dense_bytes >= sink.MIN_BYTES:
                deferred = sink.placeholders(proto, layout, (out_values.name, out_index.name))
            if deferred is not None:
                values, index = deferred
                compressed_bytes = sum(int(np.prod(t.dims)) * np_dtype(t.data_type).itemsize for t in (values, index))
            else:
                dense = constant_array(source.tensor)
                try:
                    values, index = fmt.compress_weight(dense, layout)
                except ValueError as exc:  # NotTwoFourError included: the weight was not verified
                    raise OnnxSparseError(f"CompressOp '{node.name}': cannot compress '{source.name}': {exc}") from None
                del dense
                compressed_bytes = values.nbytes + index.nbytes
            graph.remove_node(node)
            set_constant(out_values, values)
            set_constant(out_index, index)
            result.folded.append(FoldedWeight(node.name, source.name, layout, dense_bytes, compressed_bytes,
                                              (out_values.name, out_index.name)))
            del values, index
            result.modified = True
