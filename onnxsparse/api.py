"""The compiler's Python API: ``check_model`` and ``compile_model``.

Both take a model path or an ``onnx.ModelProto`` (never modified) and run the passes of
``onnxsparse.compiler`` on a copy: ``check_model`` the eligibility check, ``compile_model`` the
compile pipeline (``compiler.compile_pipeline``). The compiler never calls back into this module.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass, field

import onnx
from onnx.external_data_helper import _get_all_tensors

from . import io
from .compiler import (
    CheckSparsity,
    CompressedWeight,
    DensePolicy,
    LayerDecision,
    LayerPolicy,
    LayerRecord,
    ModelGraph,
    RewriteResult,
    compile_pipeline,
)
from .compiler.layers import compiled_layers

logger = logging.getLogger(__name__)


@dataclass
class CheckReport:
    """The verifier's per-layer records for one model."""

    layers: list[LayerRecord]
    path: str | None = None
    compiled: dict[str, int] = field(default_factory=dict)  # onnxsparse op -> layers already compiled

    @property
    def compiled_total(self) -> int:
        return sum(self.compiled.values())

    def compiled_summary(self) -> str | None:
        """"74 layers already compiled (Conv2dCompress)", or None for a model with none."""
        if not self.compiled:
            return None
        total = self.compiled_total
        ops = ", ".join(op if len(self.compiled) == 1 else f"{count} {op}" for op, count in self.compiled.items())
        return f"{total} layer{'s' if total != 1 else ''} already compiled ({ops})"

    @property
    def eligible(self) -> list[LayerRecord]:
        return [layer for layer in self.layers if layer.eligible]

    def to_dict(self) -> dict:
        return {
            "model": self.path,
            "layers": [layer.to_dict() for layer in self.layers],
            "eligible": len(self.eligible),
            "total": len(self.layers),
            "compiled": dict(self.compiled),
            "compiled_total": self.compiled_total,
        }


@dataclass
class CompileResult:
    """The compiled model, what happened to each layer, and the weight bytes before and after."""

    model: onnx.ModelProto
    layers: list[LayerDecision]
    weight_bytes_before: int
    weight_bytes_after: int
    folded: bool
    compressed: list[CompressedWeight] = field(default_factory=list)
    path: str | None = None

    @property
    def rewritten(self) -> list[LayerDecision]:
        return [layer for layer in self.layers if layer.rewritten]

    @property
    def left(self) -> list[LayerDecision]:
        return [layer for layer in self.layers if not layer.rewritten]

    def to_dict(self) -> dict:
        return {
            "model": self.path,
            "folded": self.folded,
            "rewritten": len(self.rewritten),
            "total": len(self.layers),
            "layers": [layer.to_dict() for layer in self.layers],
            "compressed": [
                {"source": c.source, "layout": c.layout, "node": c.node, "values": c.values,
                 "index": c.index, "users": list(c.users)}
                for c in self.compressed
            ],
            "weight_bytes_before": self.weight_bytes_before,
            "weight_bytes_after": self.weight_bytes_after,
        }


def check_model(model: str | os.PathLike | onnx.ModelProto) -> CheckReport:
    """Per-layer 2:4 report: which Conv/MatMul/Gemm weights comply, how much, and why not."""
    proto, path = _load(model)
    result = CheckSparsity()(ModelGraph(proto))
    return CheckReport(layers=result.layers, path=path, compiled=compiled_layers(proto))


def compile_model(
    model: str | os.PathLike | onnx.ModelProto,
    fold: bool = True,
    policy: LayerPolicy | DensePolicy | None = None,
) -> CompileResult:
    """Rewrite every eligible layer into onnxsparse's ops.

    ``fold``: evaluate CompressOp offline (True) or keep it in the graph to run in the session.
    ``policy``: a ``LayerPolicy`` (prepared once with the model) or a plain function, called with
    each eligible ``LayerRecord``; a returned string keeps that layer dense and is reported as the
    reason (the per-layer dense fallback).
    With nothing rewritten, ``result.model`` is the input model unchanged.
    """
    proto, path = _load(model)
    before = weight_bytes(proto)
    input_valid = _passes_checker(proto)
    graph = ModelGraph(proto)
    rewrite = compile_pipeline(fold=fold, policy=policy)(graph).of(RewriteResult)
    if not rewrite.modified:
        logger.info("nothing rewritten; the model is unchanged")
        return CompileResult(proto, rewrite.decisions, before, before, folded=fold, path=path)
    compiled = graph.to_model()
    if input_valid and compiled.ByteSize() < io.EXTERNAL_DATA_THRESHOLD:
        # Custom-domain nodes have no schema; full_check=False checks the rest of the graph.
        onnx.checker.check_model(compiled, full_check=False)
    return CompileResult(
        compiled, rewrite.decisions, before, weight_bytes(compiled), folded=fold, compressed=rewrite.compressed, path=path
    )


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every constant tensor in the model: initializers and Constant nodes' values."""
    total = 0
    for tensor in _get_all_tensors(model):
        if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
            continue
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        total += math.prod(tensor.dims) * itemsize
    return total


def _load(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    if isinstance(model, onnx.ModelProto):
        return copy.deepcopy(model), None
    return io.load_model(model), os.fspath(model)


def _passes_checker(model: onnx.ModelProto) -> bool:
    """Whether the input passes onnx.checker; if it does not, its compiled form is not expected to."""
    if model.ByteSize() >= io.EXTERNAL_DATA_THRESHOLD:
        return False
    try:
        onnx.checker.check_model(model, full_check=False)
    except (onnx.checker.ValidationError, ValueError) as exc:
        logger.warning("the input model does not pass onnx.checker: %s", str(exc).splitlines()[0])
        return False
    return True
