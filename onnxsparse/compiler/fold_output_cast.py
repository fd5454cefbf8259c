"""Fold a Cast to float16 after an int8 op's float output into the op: its fp16 form.

A GPU deployment keeps an int8 model's float parts in fp16 (an fp16 conversion that leaves the
quantization nodes and the int8 ops in float32 puts a ``Cast`` after each op). The Cast is a pass over
the whole output, and on CUDA it also keeps cuSPARSELt from writing the output itself. The ops have
an fp16 form (docs/ops.md "int8 ops": ``a_scale`` float16, ``Y`` float16), whose value is the float
form's rounded to fp16.

Rewrite (``S`` a ``QMatMulCompress`` or ``QConv2dCompress`` with a float output, ``y`` its output):
- ``Cast(S(A, sa, ..., w_scale=sw, ...), to=FLOAT16)`` -> ``S(A, 1 (float16), ..., w_scale=fp32(sa * sw), ...)``
  when ``y`` is read only by that Cast and is no graph output, and ``sa`` and ``sw`` are constants.
  The Cast's output becomes the op's output.
- The op multiplies the accumulator by ``fp32(a_scale * w_scale[n])``, and the scales appear nowhere
  else: with ``a_scale`` 1 and ``w_scale`` the original products that multiplier is the original's,
  bit for bit (a product with 1 is exact), so the result is the Cast of the original, exactly.
- Left, with the reason: a scale that is not constant (``DynamicQuantizeLinear``'s).

Runs in every scope, after ``FuseActivation`` (a ``Relu`` before the Cast is in the op by then).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..spec import DOMAIN, ONNX_DOMAINS, QUANT_SPARSE_OPS
from .graph import ModelGraph, constant_array, is_omitted, make_constant, resolve_constant
from .pipeline import Pass, PassResult


@dataclass
class FoldedCast:
    node: str  # the int8 op
    cast: str  # the Cast folded into it


@dataclass
class FoldCastResult(PassResult):
    folded: list[FoldedCast] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)  # (int8 op, why its Cast stayed)


def fp16_form_scales(a_scale: np.ndarray, w_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(a_scale', w_scale')`` of the fp16 form: 1 as float16, and the products ``fp32(a_scale * w_scale)``
    (the multiplier the op computes from them is the float form's exactly)."""
    product = (np.float32(np.asarray(a_scale).reshape(())) * w_scale.astype(np.float32)).astype(np.float32)
    return np.array(1.0, np.float16), product


def _constant(graph, tensor: gs.Tensor | None) -> np.ndarray | None:
    if is_omitted(tensor):
        return None
    source, _ = resolve_constant(graph, tensor)
    return None if source is None else np.asarray(constant_array(source.tensor))


class FoldOutputCast(Pass):
    """Fold ``Cast(to=FLOAT16)`` after a float-output int8 op into the op's fp16 form."""

    def call(self, graph: ModelGraph) -> FoldCastResult:
        result = FoldCastResult(graph=graph, modified=False)
        for scope in graph.scopes().values():
            self._fold(scope, result)
        if result.modified:
            graph.cleanup()
        return result

    def _fold(self, graph, result: FoldCastResult) -> None:
        outputs = {id(tensor) for tensor in graph.graph.outputs}
        for node in graph.nodes():
            if node.op not in QUANT_SPARSE_OPS or node.domain != DOMAIN or not node.outputs:
                continue
            if len(node.inputs) > 7 and not is_omitted(node.inputs[7]):
                continue  # a quantized output
            y = node.outputs[0]
            readers = list(y.outputs)
            if id(y) in outputs or len(readers) != 1:
                continue
            cast = readers[0]
            if cast.op != "Cast" or cast.domain not in ONNX_DOMAINS or len(cast.outputs) != 1:
                continue
            if int(cast.attrs.get("to", 0)) != onnx.TensorProto.FLOAT16:
                continue
            why = self._rewrite(graph, node, cast, result)
            if why:
                result.left.append((node.name, why))

    @staticmethod
    def _rewrite(graph, node: gs.Node, cast: gs.Node, result: FoldCastResult) -> str | None:
        sa = _constant(graph, node.inputs[1])
        sw = _constant(graph, node.inputs[5])
        if sa is None or sw is None:
            return "its a_scale or w_scale is not constant, so the Cast to float16 after it stays"
        if sa.dtype != np.float32 or sw.dtype != np.float32 or sa.size != 1:
            return "its scales are not float32 scalars/vectors, so the Cast to float16 after it stays"
        a16, w_scale = fp16_form_scales(sa, sw)
        base = node.name or node.outputs[0].name
        node.inputs[1] = make_constant(graph.unique_name(f"{base}.a_scale_fp16"), a16)
        node.inputs[5] = make_constant(graph.unique_name(f"{base}.w_scale_fp16"), w_scale)
        node.outputs[0] = cast.outputs[0]
        graph.remove_node(cast)
        result.folded.append(FoldedCast(node.name, cast.name))
        result.modified = True
        return None
