"""Give the outputs of onnxsparse's nodes the shapes ONNX's shape inference finds in the source model.

ONNX Runtime cannot infer shapes through a custom op, so without this every tensor after a
``MatMulCompress`` or ``Conv2dCompress`` has an unknown shape, and the graph optimizations that look
at shapes stop there (the fusion of a residual Add with the LayerNormalization after it, for
example). The rewritten nodes keep the names of the tensors they produce, so the shapes inferred for
the source model are theirs. Symbolic dimensions stay symbolic; a dimension inference could not
tell stays unknown. The ``[N, C, 1, L]`` result of a 1-D Conv's ``Conv2dCompress``, which the
source model does not have, gets the shape of the ``Squeeze`` after it with H=1. Nothing is written when inference fails (a model ONNX cannot infer still
compiles). Inference runs on the model with its weights held out (``weights_stripped``: every
tensor of 1 KiB or more, in memory or in an external file), so a model of any size is inferred
without serialising its weights; the small constants inference reads (a Reshape's shape) stay.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Iterator

import onnx

from ..spec import DOMAIN, QUANT_SPARSE_OPS, SPARSE_OPS

from .pipeline import Pass, PassResult
from .graph import ModelGraph

logger = logging.getLogger(__name__)

_MAX_BYTES = 2**31 - 1  # protobuf's limit on one serialised message


@dataclass
class AnnotateResult(PassResult):
    annotated: list[str] = field(default_factory=list)  # tensors that got a shape


_STRIP_FROM = 1024  # tensors of at least this many bytes are held out of inference (as io.save_model externalises)
_STRIPPED = "onnxsparse-stripped"  # the location a held-out tensor points to meanwhile (never read)


@contextlib.contextmanager
def weights_stripped(model: onnx.ModelProto) -> Iterator[onnx.ModelProto]:
    """The model with the data of every tensor of ``_STRIP_FROM`` bytes or more held out (marked as
    external data that nobody reads), put back on exit; tensors already in external files stay as
    they are. Shape inference and ``ByteSize`` then see the graph, not the weights."""
    held = []
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.raw_data) < _STRIP_FROM:
            continue
        held.append((tensor, tensor.raw_data))
        tensor.ClearField("raw_data")
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", _STRIPPED
        tensor.data_location = onnx.TensorProto.EXTERNAL
    try:
        yield model
    finally:
        for tensor, raw in held:
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = raw


def inferred_shapes(model: onnx.ModelProto, data_prop: bool = False) -> dict[str, tuple[int, list[int | str | None]]]:
    """name -> (elem_type, dims) for every tensor ONNX's inference types (a dim: its value, its
    symbolic name, or None); empty when inference fails or the graph alone is too large to serialise.
    Weights are held out meanwhile (``weights_stripped``)."""
    with weights_stripped(model) as stripped:
        try:
            too_large = stripped.ByteSize() > _MAX_BYTES
        except Exception:  # noqa: BLE001 - protobuf refuses to size a message over 2 GB
            too_large = True
        if too_large:
            logger.info("shape inference skipped: the graph is too large to infer in memory")
            return {}
        try:
            inferred = onnx.shape_inference.infer_shapes(stripped, strict_mode=False, data_prop=data_prop)
        except Exception as exc:  # noqa: BLE001 - a hint only; callers work without shapes
            logger.info("shape inference skipped: it failed: %s", str(exc).splitlines()[0] if str(exc) else exc)
            return {}
    out = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]
        out[value.name] = (tensor_type.elem_type, dims)
    return out


def _before_squeeze(tensor, shapes: dict) -> tuple[int, list] | None:
    """The shape of a 1-D Conv's ``[N, C, 1, L]`` result (``rules.Conv``): its Squeeze's output
    shape with H=1 put back."""
    readers = tensor.outputs
    if len(readers) != 1 or readers[0].op != "Squeeze" or not readers[0].outputs:
        return None
    found = shapes.get(readers[0].outputs[0].name)
    if found is None or len(found[1]) != 3:
        return None
    elem_type, (n, c, length) = found
    return elem_type, [n, c, 1, length]


class AnnotateShapes(Pass):
    """Set the shape of each onnxsparse node's outputs that has none, from the source model."""

    def call(self, graph: ModelGraph) -> AnnotateResult:
        result = AnnotateResult(graph=graph, modified=False)
        targets = [
            tensor
            for node in graph.nodes()
            if node.domain == DOMAIN and node.op in (*SPARSE_OPS, *QUANT_SPARSE_OPS)
            for tensor in node.outputs
            if tensor.shape is None
        ]
        if not targets:
            return result
        shapes = inferred_shapes(graph.source)
        for tensor in targets:
            found = shapes.get(tensor.name) or _before_squeeze(tensor, shapes)
            if found is None:
                continue
            elem_type, dims = found
            tensor.shape = dims
            if tensor.dtype is None and elem_type:
                tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
            result.annotated.append(tensor.name)
            result.modified = True
        return result
