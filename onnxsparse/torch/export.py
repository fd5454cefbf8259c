"""Export a masked model to ONNX and prove the compiler will rewrite every masked layer.

``export(model, args, path)`` runs ``torch.onnx.export`` (the dynamo exporter by default,
``dynamo=False`` for the TorchScript one) on the finalized model, then runs the compiler on the
result (``onnxsparse.api.compile_model``, in memory) and matches each masked module to the
Conv/MatMul/Gemm node that holds its weight. It raises ``SparseExportError`` naming every masked
layer that is not rewritten: its node is not eligible (the verifier's reason, e.g. the weight
became a graph input or is produced by a Transpose node), or no node holds its weight at all
(the exporter fused it into something else).

Matching a module to a node: the node's weight, viewed as SPEC's ``[rows, K]`` matrix
(``onnxsparse.format.to_rows_k``), equals the module's in the same view, exactly or up to one
factor per row with the same zeros (the TorchScript exporter folds an eval-mode BatchNorm into
the preceding Conv that way). A node whose weight has the module's parameter name wins ties.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper
import torch
from torch import nn
from torch.nn.utils import parametrize

from onnxsparse import format as fmt
from onnxsparse.errors import OnnxSparseError
from onnxsparse.torch.masks import CONV2D, LINEAR
from onnxsparse.torch.layers import layer_kind
from onnxsparse.torch.sparsifier import MARK, NMMask, finalize

logger = logging.getLogger(__name__)


class SparseExportError(OnnxSparseError):
    """A masked layer would not be rewritten by ``onnxsparse compile`` in the exported model."""


@dataclass
class LayerExport:
    """One masked module and what the compiler does with it in the exported graph."""

    layer: str
    node: str | None  # the ONNX node that holds its weight (None: none found)
    op: str | None
    rewritten: bool
    reason: str | None = None  # why it is not rewritten

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ExportReport:
    path: str
    layers: list[LayerExport]
    compile_result: Any = field(default=None, repr=False)  # onnxsparse.api.CompileResult

    @property
    def refused(self) -> list[LayerExport]:
        return [layer for layer in self.layers if not layer.rewritten]


def masked_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules ``finalize`` squashed (marked with their N:M) or still carrying an ``NMMask``."""
    found = {}
    for name, module in model.named_modules():
        if hasattr(module, MARK):
            found[name] = module
        elif parametrize.is_parametrized(module, "weight") and any(
            isinstance(p, NMMask) for p in module.parametrizations.weight
        ):
            found[name] = module
    return found


def export(
    model: nn.Module,
    args: tuple[Any, ...] | torch.Tensor,
    path: str | os.PathLike,
    *,
    dynamo: bool = True,
    check: bool = True,
    quiet: bool = True,
    **export_kwargs: Any,
) -> ExportReport:
    """Export ``model`` to ``path`` with ``torch.onnx.export`` and check its masked layers.

    A model still carrying masks is finalized on a copy (the model passed in is not changed);
    the exported copy runs in eval mode. ``export_kwargs`` go to ``torch.onnx.export``. With
    ``check``, raises ``SparseExportError`` unless the compiler rewrites every masked layer.
    ``quiet`` silences the exporters' progress lines and warnings.
    """
    path = os.fspath(path)
    args = (args,) if isinstance(args, torch.Tensor) else tuple(args)
    masked = masked_modules(model)
    target = model
    if any(parametrize.is_parametrized(m, "weight") for m in masked.values()):
        target = finalize(copy.deepcopy(model))
    was_training = target.training
    target.eval()
    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            _run_exporter(target, args, path, dynamo, quiet, export_kwargs)
    finally:
        target.train(was_training)
    report = ExportReport(path, [])
    if check:
        report = check_export(target, path)
    return report


def _run_exporter(model, args, path, dynamo, quiet, export_kwargs) -> None:
    torch_onnx_logger = logging.getLogger("torch.onnx")
    level = torch_onnx_logger.level
    if quiet:
        export_kwargs.setdefault("verbose", False)
        torch_onnx_logger.setLevel(logging.ERROR)  # the dynamo exporter's progress lines
    try:
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            torch.onnx.export(model, args, path, dynamo=dynamo, **export_kwargs)
    except ImportError as exc:
        raise SparseExportError(f"torch.onnx.export(dynamo={dynamo}) needs a package that is missing: {exc}; "
                                'pip install "onnxsparse[torch]", or pass dynamo=False') from exc
    finally:
        torch_onnx_logger.setLevel(level)


def check_export(model: nn.Module, path: str | os.PathLike) -> ExportReport:
    """Compile the exported model in memory and match each masked module of ``model`` to its node."""
    from onnxsparse.api import compile_model

    path = os.fspath(path)
    result = compile_model(path)
    proto = onnx.load(path)
    constants = _constants(proto)
    layers = []
    for name, module in masked_modules(model).items():
        layers.append(_match(name, module, result.layers, constants))
    report = ExportReport(path, layers, result)
    if report.refused:
        lines = [f"{r.layer}: " + (f"{r.op} node {r.node!r}: {r.reason}" if r.node else r.reason) for r in report.refused]
        raise SparseExportError(
            f"{path}: {len(report.refused)} of {len(layers)} masked layers would not be rewritten by onnxsparse "
            "compile: " + "; ".join(lines)
        )
    logger.info("%s: all %d masked layers are eligible", path, len(layers))
    return report


def _constants(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant nodes' tensors of the main graph, by name."""
    found = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value":
                    found[node.output[0]] = attr.t
    arrays = {}
    for name, tensor in found.items():
        try:
            arrays[name] = onnx.numpy_helper.to_array(tensor)
        except Exception:  # noqa: BLE001 - a tensor we cannot read simply matches nothing
            continue
    return arrays


def _module_rows_k(module: nn.Module) -> np.ndarray:
    weight = module.weight.detach().cpu().float().numpy()
    kind = layer_kind(module)
    if kind == LINEAR:
        return fmt.to_rows_k(weight, "nk")
    if kind == CONV2D:
        return fmt.to_rows_k(weight, "oihw")
    raise ValueError(f"{type(module).__name__} is not a Linear or Conv2d")


def _same_up_to_row_scale(a: np.ndarray, b: np.ndarray) -> bool:
    """b = diag(s) a with the same zeros (a BatchNorm folded into the weight)."""
    if not np.array_equal(a == 0, b == 0):
        return False
    ratio = np.divide(b, a, out=np.zeros_like(b), where=a != 0)
    nz = a != 0
    for row in range(a.shape[0]):
        r = ratio[row][nz[row]]
        if r.size and not np.allclose(r, r[0], rtol=1e-4, atol=0):
            return False
    return True


def _match(name: str, module: nn.Module, decisions: list, constants: dict[str, np.ndarray]) -> LayerExport:
    """The compiler's decision for the node holding this module's weight (its ``to_dict()`` form,
    the same fields ``onnxsparse compile --json`` prints)."""
    expected = _module_rows_k(module)
    param_name = f"{name}.weight"
    best, best_score = None, 0
    for decision in decisions:
        layer = decision.to_dict()
        source = layer.get("source") or layer.get("weight")
        array = constants.get(source) if source else None
        named = param_name in (layer.get("source"), layer.get("weight"))
        if array is None or layer.get("layout") is None:
            score = 1 if named else 0  # a weight that is not constant: only its name ties it to the module
        else:
            try:
                rows_k = fmt.to_rows_k(array.astype(np.float32), layer["layout"])
            except ValueError:
                continue
            if rows_k.shape != expected.shape:
                continue
            if np.array_equal(rows_k, expected):
                score = 6
            elif _same_up_to_row_scale(expected, rows_k):
                score = 4
            else:
                continue
            score += named
        if score > best_score:
            best, best_score = layer, score
    if best is None:
        return LayerExport(name, None, None, False,
                           "no Conv/MatMul/Gemm of the exported graph holds its weight (fused or changed by the exporter)")
    return LayerExport(name, best["node"], best["op"], bool(best["rewritten"]), best.get("reason"))
