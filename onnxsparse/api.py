"""The compiler's Python API: ``check_model`` and ``compile_model``.

Both take a model path or an ``onnx.ModelProto`` (never modified) and run the passes of
``onnxsparse.compiler`` on a copy: ``check_model`` the eligibility check, ``compile_model`` the
compile pipeline (``compiler.compile_pipeline``). The compiler never calls back into this module.

Models of any size (issue 16): ``check_model(path)`` and ``compile_model(path, output=...)`` stream.
The model is opened with its weights left in their files (``io.open_model``); each weight is read
when a pass needs it and dropped: the check reads it, and ``io.save_model``, reaching its
placeholders in the model's order, reads it again, compresses it and writes the pair straight into
the output's data file (``compiler.DeferredPairs``); the other weights are copied there a chunk at a
time. Shape inference and the checker see the graph without its weights. Peak memory is about twice the largest weight plus the graph; no step serialises a model's
weights, so models over protobuf's 2 GB limit work. The output is the same, byte for byte, as an
in-memory compile saved with the same external-data choice (tests/test_streaming.py).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx.external_data_helper import _get_all_tensors

from . import io
from .compiler import (
    CheckSparsity,
    FoldCastResult,
    FoldedCast,
    CompressedWeight,
    DensePolicy,
    LayerDecision,
    LayerPolicy,
    LayerRecord,
    ModelGraph,
    DeferredPairs,
    RewriteResult,
    compile_pipeline,
)
from .compiler.annotate_shapes import weights_stripped
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
    output: Path | None = None  # where compile_model(..., output=...) wrote the model
    written: list[Path] = field(default_factory=list)  # the files it wrote (model, data file)
    casts_folded: list[FoldedCast] = field(default_factory=list)  # Casts to float16 taken into int8 ops

    @property
    def changed(self) -> bool:
        """Whether the compiled model differs from the input (a layer rewritten or a Cast folded)."""
        return bool(self.rewritten or self.casts_folded)

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


def check_model(model: str | os.PathLike | onnx.ModelProto, pad_channels: bool = False) -> CheckReport:
    """Per-layer 2:4 report: which Conv/MatMul/Gemm weights comply, how much, and why not.
    A path is streamed: each weight is read from its file when it is checked, then dropped.
    ``pad_channels``: judge a 2-D group-1 Conv whose C is not a multiple of 4 on its weight with zero
    input channels appended up to one (an exact extension of SPEC; ``compiler.channel_padding``)."""
    proto, path = _load(model, lazy=True)
    result = CheckSparsity(pad_channels)(ModelGraph(proto))
    return CheckReport(layers=result.layers, path=path, compiled=compiled_layers(proto))


def compile_model(
    model: str | os.PathLike | onnx.ModelProto,
    fold: bool = True,
    policy: LayerPolicy | DensePolicy | None = None,
    output: str | os.PathLike | None = None,
    external_data: bool | None = None,
    pad_channels: bool = False,
    conv_layout: str = "nchw",
) -> CompileResult:
    """Rewrite every eligible layer into onnxsparse's ops.

    ``fold``: evaluate CompressOp offline (True) or keep it in the graph to run in the session.
    ``policy``: a ``LayerPolicy`` (prepared once with the model) or a plain function, called with
    each eligible ``LayerRecord``; a returned string keeps that layer dense and is reported as the
    reason (the per-layer dense fallback).
    ``output``: write the compiled model there (``io.save_model``, with ``external_data``: True
    keeps weights in a data file, False embeds them, None decides by size) and stream: a model
    path is then compiled a weight at a time (see the module's docstring), whatever its size;
    ``result.model`` is the written model with its weights left in the output's data file
    (``io.open_model``), ``result.output`` its path. Without ``output`` the model is compiled in
    memory. With nothing rewritten, ``result.model`` is the input model unchanged.
    ``pad_channels``: also rewrite a 2-D group-1 Conv whose C is not a multiple of 4, as
    ``Conv2dCompress`` on its input zero-padded by a ``Pad`` (exact; ``compiler.channel_padding``).
    ``conv_layout="nhwc"``: run chains of sparse convs in NHWC, Transposes only at their ends (for
    CUDA; ``compiler.nhwc_chains``).
    """
    if output is not None:
        return _compile_to(model, output, fold, policy, external_data, pad_channels, conv_layout)
    proto, path = _load(model)
    before = weight_bytes(proto)
    input_valid = _passes_checker(proto)
    graph = ModelGraph(proto)
    passes = compile_pipeline(fold=fold, policy=policy, pad_channels=pad_channels, conv_layout=conv_layout)(graph)
    rewrite, casts = passes.of(RewriteResult), passes.of(FoldCastResult)
    if not (rewrite.modified or casts.modified):
        logger.info("nothing rewritten; the model is unchanged")
        return CompileResult(proto, rewrite.decisions, before, before, folded=fold, path=path)
    compiled = graph.to_model()
    if input_valid:
        _check_compiled(compiled)
    return CompileResult(
        compiled, rewrite.decisions, before, weight_bytes(compiled), folded=fold, compressed=rewrite.compressed, path=path,
        casts_folded=casts.folded,
    )


def _compile_to(model, output, fold: bool, policy, external_data: bool | None, pad_channels: bool = False,
                conv_layout: str = "nchw"
                ) -> CompileResult:
    """The streaming compile: weights read from their files one at a time, large pairs made by the save."""
    inputs = [] if isinstance(model, onnx.ModelProto) else [model]
    out = io.check_output_path(output, inputs=inputs)
    proto, path = _load(model, lazy=True)
    before = weight_bytes(proto)
    input_valid = _passes_checker(proto)
    pairs = DeferredPairs()
    graph = ModelGraph(proto)
    passes = compile_pipeline(fold=fold, policy=policy, sink=pairs, pad_channels=pad_channels,
                              conv_layout=conv_layout)(graph)
    rewrite, casts = passes.of(RewriteResult), passes.of(FoldCastResult)
    changed = rewrite.modified or casts.modified
    compiled = graph.to_model() if changed else proto
    if not changed:
        logger.info("nothing rewritten; the model is unchanged")
    elif input_valid:
        _check_compiled(compiled)
    after = weight_bytes(compiled)
    written = io.save_model(compiled, out, external_data=external_data, inputs=inputs, sources=pairs)
    del compiled, graph, pairs
    result = CompileResult(io.open_model(out), rewrite.decisions, before, after, folded=fold,
                           compressed=rewrite.compressed if rewrite.modified else [], path=path,
                           casts_folded=casts.folded)
    result.output, result.written = out, written
    return result


def _check_compiled(compiled: onnx.ModelProto) -> None:
    """onnx.checker on the compiled graph (weights held out; custom-domain nodes have no schema,
    full_check=False checks the rest). A tensor held out is checked for its declared size only."""
    with weights_stripped(compiled) as stripped, _checkable(stripped) as checkable:
        if checkable is not None:
            onnx.checker.check_model(checkable, full_check=False)


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every constant tensor in the model: initializers and Constant nodes' values."""
    total = 0
    for tensor in _get_all_tensors(model):
        if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
            continue
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        total += math.prod(tensor.dims) * itemsize
    return total


def _load(model: str | os.PathLike | onnx.ModelProto, lazy: bool = False) -> tuple[onnx.ModelProto, str | None]:
    if isinstance(model, onnx.ModelProto):
        return copy.deepcopy(model), None
    return (io.open_model(model) if lazy else io.load_model(model)), os.fspath(model)


def _passes_checker(model: onnx.ModelProto) -> bool:
    """Whether the input passes onnx.checker; if it does not, its compiled form is not expected to."""
    try:
        with weights_stripped(model) as stripped, _checkable(stripped) as checkable:
            if checkable is None:
                return False
            onnx.checker.check_model(checkable, full_check=False)
    except (onnx.checker.ValidationError, ValueError) as exc:
        logger.warning("the input model does not pass onnx.checker: %s", str(exc).splitlines()[0])
        return False
    return True


@contextlib.contextmanager
def _checkable(stripped: onnx.ModelProto):
    """The stripped model as onnx.checker can take it, or None when its graph alone is over 2 GB.

    The checker wants each external tensor's file beside the model (relative location) with the
    declared bytes in it; a held-out tensor is written as a hole of its size into a sparse file in
    a temporary folder (no data is written: ``truncate``), so the checker checks sizes, not values."""
    moved = []
    with tempfile.TemporaryDirectory(prefix="onnxsparse-check-") as folder:
        holes = Path(folder) / "weights"
        end = 0
        for tensor in onnx.external_data_helper._get_all_tensors(stripped):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            entries = [(entry.key, entry.value) for entry in tensor.external_data]
            moved.append((tensor, entries))
            length = io.expected_bytes(tensor)
            if length is None:
                length = io.external_info(tensor)[2] or 0
            del tensor.external_data[:]
            for key, value in (("location", holes.name), ("offset", str(end)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            end += length
        try:
            with open(holes, "wb") as f:
                f.truncate(end)
            try:
                size = stripped.ByteSize()
            except Exception:  # noqa: BLE001 - protobuf refuses to size a message over 2 GB
                size = None
            if size is None or size >= io.EXTERNAL_DATA_THRESHOLD:
                yield None
            else:
                path = Path(folder) / "model.onnx"
                path.write_bytes(stripped.SerializeToString())
                yield str(path)
        finally:
            for tensor, entries in moved:
                del tensor.external_data[:]
                for key, value in entries:
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
