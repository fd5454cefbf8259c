"""What every pass shares: the ``Pass`` protocol, ``PassResult`` and the per-layer ``LayerRecord``.

A pass is a small object with one entry point, ``call(graph) -> PassResult`` (also ``pass_(graph)``).
The result says whether the pass changed the graph and carries what it found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .graph import ModelGraph


@dataclass
class PassResult:
    graph: ModelGraph
    modified: bool


class Pass:
    """Base of the passes: subclasses implement ``call``."""

    def call(self, graph: ModelGraph) -> PassResult:
        raise NotImplementedError

    def __call__(self, graph: ModelGraph) -> PassResult:
        return self.call(graph)


@dataclass
class LayerRecord:
    """What the verifier found for one Conv/MatMul/Gemm node: eligible, or the reason it is not."""

    node: str  # the node's name, or a description of an unnamed node
    op: str
    eligible: bool
    reason: str | None = None  # why not eligible: one sentence
    weight: str | None = None  # the tensor the node reads its weight from
    source: str | None = None  # the constant behind it (through Identity chains)
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    layout: str | None = None  # "kn", "nk" or "oihw" (onnxsparse.format)
    share: float | None = None  # share of 2:4-compliant groups along SPEC's axis, 0..1
    visited: bool = True  # False for nodes inside subgraphs and functions
    # Set by RewriteSparseOps before the policy sees the layer: the bias Add it would fold into the
    # sparse op (MatMul only), and the op types that read that Add's result ("" for a graph output).
    bias_add: str | None = None
    bias_consumers: tuple[str, ...] = ()
    gs_node: Any = field(default=None, repr=False, compare=False)  # the node in the verified graph
    gs_source: Any = field(default=None, repr=False, compare=False)  # the tensor holding the weight

    def to_dict(self) -> dict:
        return {
            "node": self.node,
            "op": self.op,
            "weight": self.weight,
            "source": self.source,
            "shape": list(self.shape) if self.shape is not None else None,
            "dtype": self.dtype,
            "layout": self.layout,
            "share": self.share,
            "eligible": self.eligible,
            "reason": self.reason,
            "visited": self.visited,
        }


# Per-layer dense fallback: given a layer the verifier found eligible, return a reason to keep it
# dense (one sentence, shown to the user), or None to rewrite it.
DensePolicy = Callable[[LayerRecord], "str | None"]


def node_label(node) -> str:
    """A node's name, or a recognisable description when it has none."""
    if node.name:
        return node.name
    outputs = [tensor.name for tensor in node.outputs]
    return f"<{node.op} -> {outputs[0]}>" if outputs else f"<{node.op}>"
