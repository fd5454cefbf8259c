"""Evaluate ``CompressOp`` offline, so the saved model holds only compressed initializers.

Rewrite:
- ``CompressOp(W, layout) -> (values, index)`` with W constant (initializer, Constant node, Identity
  chains of either) -> initializers ``values``, ``index`` = ``onnxsparse.format.compress_weight(W, layout)``
  under the same tensor names, so every consumer keeps reading them.

Afterwards ``cleanup`` drops the dense weight when no other node uses it; a weight still read by a
dense node (not eligible, or kept dense by the policy) stays. A CompressOp whose input is not
constant is left in the graph and reported. CompressOps inside If/Loop/Scan bodies are folded in
their body (its initializers); local functions are not visited.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


class FoldCompress(Pass):
    """Replace each CompressOp with constant input by its (values, index) initializers."""

    def call(self, graph: ModelGraph) -> FoldResult:
        result = FoldResult(graph=graph, modified=False)
        for scope in graph.scopes().values():
            folded = len(result.folded)
            self._fold(scope, result)
            if scope is graph:  # main-graph pairs stay there, however deep their readers are
                graph.main_initializers |= {name for weight in result.folded[folded:] for name in weight.outputs}
        if result.modified:
            graph.cleanup()
        return result

    @staticmethod
    def _fold(graph, result: FoldResult) -> None:
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
            out_values, out_index = node.outputs
            graph.remove_node(node)
            set_constant(out_values, values)
            set_constant(out_index, index)
            result.folded.append(FoldedWeight(node.name, source.name, layout, dense.nbytes, values.nbytes + index.nbytes,
                                              (out_values.name, out_index.name)))
            result.modified = True
