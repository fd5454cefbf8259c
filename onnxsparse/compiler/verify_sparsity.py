"""Verify which Conv/MatMul/Gemm weights are constant and 2:4-sparse; never modifies the graph.

For each node it records the weight (name, constant behind it, shape, dtype, layout), the share of
groups of 4 along SPEC's reduction axis that hold at most 2 non-zeros, and either "eligible" or the
reason it is not. ``RewriteSparseOps`` trusts these records instead of checking again.

Sparse axis and layout per op (``onnxsparse.format``):
- ``MatMul(A, W)``, W ``[K, N]``: layout ``"kn"``, groups along K (down each column).
- ``Gemm(A, B, transB=0)``, B ``[K, N]``: ``"kn"``; ``Gemm(A, B, transB=1)``, B ``[N, K]``: ``"nk"``.
- ``Conv(X, W)``, W ``[OC, C/group, KH, KW]``: ``"oihw"``, viewed as ``[OC, KH*KW*C/group]`` in
  (kh, kw, c) order, groups of 4 consecutive input channels at one kernel position.

Eligibility, checked in this order (the first failure is the reason):
1. the weight is constant: an initializer, a ``Constant`` node's output, or ``Identity`` chains of
   either; not a graph input (an initializer listed as an input can be overridden at run time);
2. for MatMul/Gemm, the constant is the second input (``X @ W``, not ``W @ X``);
3. the dtype is float, float16 or bfloat16;
4. the op variant is supported: MatMul weight of rank 2 and A of rank 1 to 4; Conv 2-D (weight rank 4);
5. K (for Conv: C/group) is a multiple of 4;
6. every group along K holds at most 2 non-zeros (-0.0 counts as zero).
A weight shared with a node that is not eligible is fine: that node keeps using the dense weight.

Subgraphs and functions: not visited. Target nodes inside If/Loop/Scan bodies or local functions
are reported with ``visited=False`` and a reason saying where they are; they are never rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import format as fmt
from ..spec import ONNX_DOMAINS, SUPPORTED_DTYPES, TARGET_OPS
from .base import LayerRecord, Pass, PassResult, node_label
from .graph import ModelGraph, constant_array, dtype_name, nested_nodes, resolve_constant


@dataclass
class VerifyResult(PassResult):
    layers: list[LayerRecord] = field(default_factory=list)

    @property
    def eligible(self) -> list[LayerRecord]:
        return [layer for layer in self.layers if layer.eligible]


def percent(share: float) -> str:
    """A share 0..1 as a percentage that never rounds a non-zero share to 0 or 100."""
    value = 100.0 * share
    if 0 < value < 0.1:
        return "<0.1%"
    if 99.9 < value < 100:
        return ">99.9%"
    return f"{value:.1f}%"


class VerifySparsity(Pass):
    """Record, per Conv/MatMul/Gemm node, whether its weight can be compressed 2:4 and why not."""

    def call(self, graph: ModelGraph) -> VerifyResult:
        layers = [self.verify_node(graph, node) for node in graph.nodes() if _is_target(node)]
        for node, where in nested_nodes(graph.source):
            if node.op_type in TARGET_OPS and node.domain in ONNX_DOMAINS:
                layers.append(
                    LayerRecord(
                        node=node.name or (f"<{node.op_type} -> {node.output[0]}>" if node.output else f"<{node.op_type}>"),
                        op=node.op_type,
                        eligible=False,
                        reason=f"inside {where}; subgraphs and functions are not visited",
                        visited=False,
                    )
                )
        return VerifyResult(graph=graph, modified=False, layers=layers)

    def verify_node(self, graph: ModelGraph, node) -> LayerRecord:
        record = LayerRecord(node=node_label(node), op=node.op, eligible=False, gs_node=node)
        if len(node.inputs) < 2:
            record.reason = f"{node.op} has no weight input"
            return record
        weight = node.inputs[1]
        record.weight = weight.name
        source, why_not = resolve_constant(graph, weight)
        if source is None:
            first_constant, _ = resolve_constant(graph, node.inputs[0])
            if node.op in ("MatMul", "Gemm") and first_constant is not None:
                why_not = (
                    f"the constant '{node.inputs[0].name}' is the first input of {node.op} (W @ X); "
                    "only X @ W with a constant second input is supported"
                )
            record.reason = why_not
            return record

        proto = source.proto()
        record.source, record.gs_source = source.name, source.tensor
        record.shape = tuple(int(d) for d in proto.dims)
        record.dtype = dtype_name(proto.data_type)
        if record.dtype not in SUPPORTED_DTYPES:
            record.reason = f"dtype {record.dtype} is not supported (only float, float16, bfloat16)"
            return record

        record.layout, record.reason = _layout(node, record.shape)
        if record.reason:
            return record
        k, axis = _reduction(node, record.shape, record.layout)
        if k % fmt.GROUP:
            record.reason = f"{axis} = {k} is not a multiple of 4"
            return record

        stats = fmt.group_stats(fmt.to_rows_k(constant_array(source.tensor), record.layout))
        record.share = stats.share
        if stats.compliant < stats.groups:
            record.reason = f"{percent(1 - stats.share)} of groups have more than 2 non-zeros"
            return record
        record.eligible = True
        return record


def _is_target(node) -> bool:
    return node.op in TARGET_OPS and node.domain in ONNX_DOMAINS


def _layout(node, shape: tuple[int, ...]) -> tuple[str | None, str | None]:
    """The weight's layout, or the reason this variant of the op is not supported."""
    rank = len(shape)
    if node.op == "MatMul":
        if rank != 2:
            return None, f"MatMul weight has rank {rank}; only rank-2 weights are supported"
        a_shape = node.inputs[0].shape
        if a_shape is not None and not 1 <= len(a_shape) <= 4:
            return None, f"MatMul input A has rank {len(a_shape)}; only ranks 1 to 4 are supported"
        return "kn", None
    if node.op == "Gemm":
        if rank != 2:
            return None, f"Gemm weight has rank {rank}; Gemm needs a rank-2 weight"
        return ("nk" if node.attrs.get("transB", 0) else "kn"), None
    # Conv
    if rank != 4:
        return None, f"Conv is {rank - 2}-D (weight rank {rank}); only 2-D Conv is supported"
    return "oihw", None


def _reduction(node, shape: tuple[int, ...], layout: str) -> tuple[int, str]:
    """The length that must be a multiple of 4, and how to call it in a reason."""
    if layout == "oihw":
        return shape[1], "C/group"
    return fmt.reduction_length(shape, layout), "K"
