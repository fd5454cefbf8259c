"""Fold the activation that follows a sparse op into the op's epilogue.

Rewrite (``Conv2dCompress`` or ``MatMulCompress`` as ``S``; ``y`` its output):
- ``Act(S(...))`` -> ``S(..., activation=Act, activation_params=[...])`` when ``y`` is read only by
  that activation node and is not a graph output; the activation's output becomes the op's output,
  so every reader keeps its tensor. ``Act`` is one of Relu, Clip (min and max constant scalars: the
  inputs of opset 11+ or the attributes before), HardSigmoid (alpha, beta), HardSwish, Sigmoid,
  LeakyRelu (alpha), Gelu (ONNX opset 20 with ``approximate="none"``, or com.microsoft's, both the
  exact erf form) -- the activations ONNX Runtime fuses into its dense Conv and Gemm.
- ``Mul(y, HardSigmoid(y))`` (either operand order; the form of HardSwish some exporters write) ->
  ``S(..., activation="HardSwish", activation_params=[alpha, beta])`` when ``y`` is read only by
  those two nodes, the HardSigmoid only by the Mul, and ``y`` is no graph output.

The kernels apply it in fp32 to ``alpha * product + bias`` and round once (docs/ops.md). Runs in
every scope (If/Loop/Scan bodies too), after ``RewriteSparseOps``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ..spec import CONV2D_COMPRESS, DOMAIN, MATMUL_COMPRESS, ONNX_DOMAINS
from .graph import ModelGraph, constant_array, is_omitted, resolve_constant
from .pipeline import Pass, PassResult

SPARSE_OPS = (CONV2D_COMPRESS, MATMUL_COMPRESS)
ACTIVATIONS = ("Relu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid", "LeakyRelu", "Gelu")
MS_DOMAIN = "com.microsoft"


@dataclass
class FusedActivation:
    node: str  # the sparse op
    activation: str  # the activation as the op's attribute names it
    params: tuple[float, ...]
    removed: tuple[str, ...]  # the node(s) folded away


@dataclass
class FuseResult(PassResult):
    fused: list[FusedActivation] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)  # (sparse op, why its activation stayed)


def _scalar(graph, tensor: gs.Tensor | None, default: float) -> tuple[float | None, str | None]:
    if is_omitted(tensor):
        return default, None
    source, why_not = resolve_constant(graph, tensor)
    if source is None:
        return None, f"Clip's bound '{tensor.name}' is not constant ({why_not})"
    array = np.asarray(constant_array(source.tensor), dtype=np.float64)
    if array.size != 1:
        return None, f"Clip's bound '{tensor.name}' is not a scalar"
    return float(array.reshape(())), None


def activation_of(graph, node: gs.Node) -> tuple[str, tuple[float, ...]] | str:
    """The (activation, params) the op's attributes would hold for ``node``, or why it cannot."""
    op = node.op
    if node.domain == MS_DOMAIN and op == "Gelu":
        return "Gelu", ()
    if node.domain not in ONNX_DOMAINS or op not in ACTIVATIONS:
        return f"a {op} is not an activation the kernels fuse"
    if op in ("Relu", "Sigmoid", "HardSwish"):
        return op, ()
    if op == "LeakyRelu":
        return op, (float(node.attrs.get("alpha", 0.01)),)
    if op == "HardSigmoid":
        return op, (float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5)))
    if op == "Gelu":
        approximate = node.attrs.get("approximate", "none")
        if approximate != "none":
            return f"Gelu approximate='{approximate}' is not the exact form the kernels fuse"
        return "Gelu", ()
    # Clip: attributes before opset 11, optional constant inputs from 11.
    if "min" in node.attrs or "max" in node.attrs:
        lo, hi = float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf))
    else:
        lo, why = _scalar(graph, node.inputs[1] if len(node.inputs) > 1 else None, -np.inf)
        if lo is None:
            return why
        hi, why = _scalar(graph, node.inputs[2] if len(node.inputs) > 2 else None, np.inf)
        if hi is None:
            return why
    return "Clip", (lo, hi)


class FuseActivation(Pass):
    """Fold ``Act(S(...))`` and ``Mul(y, HardSigmoid(y))`` into the sparse op's attributes."""

    def call(self, graph: ModelGraph) -> FuseResult:
        result = FuseResult(graph=graph, modified=False)
        for scope in graph.scopes().values():
            self._fuse(scope, result)
        if result.modified:
            graph.cleanup()
        return result

    def _fuse(self, graph, result: FuseResult) -> None:
        outputs = {id(tensor) for tensor in graph.graph.outputs}
        for node in graph.nodes():
            if node.op not in SPARSE_OPS or node.domain != DOMAIN or not node.outputs:
                continue
            if node.attrs.get("activation"):
                continue
            y = node.outputs[0]
            readers = list(y.outputs)
            if id(y) in outputs or not readers:
                continue
            found = self._match(graph, y, readers)
            if isinstance(found, str):
                if found:
                    result.left.append((node.name, found))
                continue
            name, params, removed, out = found
            node.attrs["activation"] = name
            if params:
                node.attrs["activation_params"] = [float(p) for p in params]
            for other in removed:
                graph.remove_node(other)
            node.outputs[0] = out
            result.fused.append(FusedActivation(node.name, name, tuple(params), tuple(n.name for n in removed)))
            result.modified = True

    @staticmethod
    def _match(graph, y: gs.Tensor, readers: list[gs.Node]):
        """(activation, params, nodes to remove, the tensor the op writes now), or why not ("" when
        the reader is no activation at all)."""
        if len(readers) == 1:
            act = readers[0]
            if not act.inputs or act.inputs[0] is not y or len(act.outputs) != 1:
                return ""
            found = activation_of(graph, act)
            if isinstance(found, str):
                return found if act.op in ACTIVATIONS else ""
            return found[0], found[1], [act], act.outputs[0]
        if len(readers) == 2:  # Mul(y, HardSigmoid(y))
            hsig = next((r for r in readers if r.op == "HardSigmoid" and r.domain in ONNX_DOMAINS), None)
            mul = next((r for r in readers if r.op == "Mul" and r.domain in ONNX_DOMAINS), None)
            if hsig is None or mul is None or len(hsig.outputs) != 1 or len(mul.inputs) != 2:
                return ""
            s = hsig.outputs[0]
            if list(s.outputs) != [mul] or {id(t) for t in mul.inputs} != {id(y), id(s)}:
                return ""
            if id(s) in {id(t) for t in graph.graph.outputs}:
                return ""
            params = (float(hsig.attrs.get("alpha", 0.2)), float(hsig.attrs.get("beta", 0.5)))
            return "HardSwish", params, [hsig, mul], mul.outputs[0]
        return ""
