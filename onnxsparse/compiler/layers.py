"""Layer discovery: every Conv/MatMul/Gemm of a model with its weight, as plain facts.

The one place that finds layers. The compiler's eligibility check, the pruner, the sensitivity
analysis and the per-target choice all start from ``find_layers``:

1. the node has a weight input (input B);
2. the weight is constant (``graph.resolve_constant``: an initializer, a ``Constant`` node's
   output, or ``Identity`` chains of either; not a graph input). For MatMul/Gemm a constant first
   input (``W @ X``) is named as such;
3. the weight's dtype is one the caller accepts (``spec.WEIGHT_DTYPES``);
4. the weight's rank fits the op: MatMul and Gemm rank 2, Conv rank 4 (2-D) or, when the caller
   asks for it (``conv1d=True``), rank 3 (1-D, read as H=1), which fixes the layout
   (``spec.weight_layout``).

A record that fails gets the reason of the first failure; one that passes has its layout, and the
caller checks what it needs beyond (the compiler: K a multiple of 4 and 2:4 sparsity; the pruner:
K a multiple of M). With ``pad_channels`` (opt-in, ``channel_padding``) a 2-D group-1 Conv whose C is
not a multiple also carries ``padded_channels``, the C its callers use instead.
Records carry plain values only (names, shapes, attributes), never graph objects; ``index`` is the
node's position among the nodes of its graph (``scope``).

Subgraphs: with ``find_layers(..., subgraphs=True)`` (the compiler) the layers inside If/Loop/Scan
bodies are described like the top-level ones, with ``scope`` naming the body ("the then_branch of
If 'c'", "the body of Loop 'l' > the else_branch of If 'k'"); ``graph.scope(record.scope)`` is that
body, seen as the passes see a graph, and ``layer_node(graph, record)`` the node. Without it they
are reported with ``visited=False``. Layers in
local functions are always reported with ``visited=False`` and a reason (inline the functions first).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import onnx_graphsurgeon as gs

import onnx

from ..spec import DOMAIN, ONNX_DOMAINS, QUANT_SPARSE_OPS, SPARSE_OPS, SUPPORTED_DTYPES, TARGET_OPS, weight_layout
from .channel_padding import pad_target
from .graph import ModelGraph, dtype_name, nested_nodes, resolve_constant

Shape = tuple  # of int, str (a symbolic dimension) or None (unknown)


@dataclass
class LayerRecord:
    """One Conv/MatMul/Gemm node: what it reads, and whether it is eligible or why not."""

    node: str  # the node's name, or a description of an unnamed node
    op: str
    eligible: bool = False
    reason: str | None = None  # why not eligible: one sentence
    weight: str | None = None  # the tensor the node reads its weight from
    source: str | None = None  # the constant behind it (through Identity chains)
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    layout: str | None = None  # "kn", "nk" or "oihw" (onnxsparse.format)
    share: float | None = None  # share of 2:4-compliant groups along SPEC's axis, 0..1
    # C after zero-padding the input channels (``find_layers(pad_channels=True)``, channel_padding);
    # None: not padded. ``shape`` stays the weight's own.
    padded_channels: int | None = None
    visited: bool = True  # False for nodes the caller's discovery does not describe (subgraphs, functions)
    scope: str = ""  # where the node is: "" (main graph) or "the then_branch of If 'c'" (find_layers)
    quant: str | None = None  # a quantized layer (quant_rules): "QDQ" or its QOperator op; None: float
    # Set by the rewrite before the policy sees the layer: the bias Add it would fold into the
    # sparse op (MatMul only), and the op types that read that Add's result ("" for a graph output).
    bias_add: str | None = None
    bias_consumers: tuple[str, ...] = ()
    # Plain facts of the node, for the policy and the pruner.
    index: int | None = None  # position among the graph's top-level nodes (None: not visited)
    attrs: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    activation: str | None = None  # the tensor the weight multiplies (input A or X)
    activation_shape: Shape | None = None
    output: str | None = None
    output_shape: Shape | None = None

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
            "padded_channels": self.padded_channels,
            "eligible": self.eligible,
            "reason": self.reason,
            "visited": self.visited,
            "scope": self.scope,
            "quant": self.quant,
        }


def node_label(name: str, op: str, outputs: list[str]) -> str:
    """A node's name, or a recognisable description when it has none."""
    if name:
        return name
    return f"<{op} -> {outputs[0]}>" if outputs else f"<{op}>"


def matches(patterns: list[str], name: str, op: str) -> bool:
    """Whether an fnmatch pattern matches the node's name or its op type."""
    return any(fnmatchcase(name, pattern) or fnmatchcase(op, pattern) for pattern in patterns)


def is_layer(op: str, domain: str | None) -> bool:
    return op in TARGET_OPS and domain in ONNX_DOMAINS


def find_layers(graph: ModelGraph, dtypes: tuple[str, ...] = SUPPORTED_DTYPES, conv1d: bool = False,
                subgraphs: bool = False, pad_channels: bool = False, multiple: int = 4) -> list[LayerRecord]:
    """A record per Conv/MatMul/Gemm: the top-level ones in graph order, then the nested ones.

    ``conv1d``: give a 1-D Conv (weight ``[OC, C/group, KW]``) the layout ``"oihw"`` with its
    rank-3 shape, to be read as ``[OC, C/group, 1, KW]`` (the compiler rewrites it through the 2-D
    op with H=1). Off by default: a caller that reads a Conv's geometry as 2-D opts in when it
    handles the 1-D form; otherwise a 1-D Conv has the reason "Conv is 1-D".

    ``subgraphs``: describe the layers inside If/Loop/Scan bodies (nested ones too) like the
    top-level ones: ``visited=True``, ``scope`` saying where they are, ``index`` their position
    among that body's nodes (``graph.scope(record.scope).nodes()[record.index]`` is the node).
    Weights are resolved in the body, then in the enclosing graphs (outer-scope initializers); a
    body input is not constant. Off by default (callers that index the top-level nodes only):
    then those layers have ``visited=False`` and the reason "subgraphs and functions are not
    visited". Layers inside local functions are never described: ``visited=False`` and a reason
    saying to inline the functions first.

    ``pad_channels``: a 2-D Conv with group 1 whose C is not a multiple of ``multiple`` (4 for the
    compiler, M for the pruner) gets ``padded_channels``, C rounded up (``channel_padding``): its
    callers treat it as the Conv on zero-padded input channels. Off by default (SPEC's rule)."""
    scopes = graph.scopes() if subgraphs else {"": graph}
    layers = [
        _in_scope(describe_layer(scope, node, index, dtypes, conv1d, pad_channels, multiple), where)
        for where, scope in scopes.items()
        for index, node in enumerate(scope.nodes())
        if is_layer(node.op, node.domain)
    ]
    for node, where in nested_nodes(graph.source):
        if not is_layer(node.op_type, node.domain) or where in scopes:
            continue
        if where.startswith("function"):
            reason = (f"inside {where}; local functions are not rewritten: inline them first "
                      "(onnx.inliner.inline_local_functions)")
        else:
            reason = f"inside {where}; subgraphs and functions are not visited"
        layers.append(LayerRecord(node=node_label(node.name, node.op_type, list(node.output)), op=node.op_type,
                                  reason=reason, visited=False, scope=where))
    return layers


def layer_node(graph: ModelGraph, record: LayerRecord) -> gs.Node:
    """The graphsurgeon node a visited record describes, in its scope (main graph or body)."""
    if not record.visited or record.index is None:
        raise ValueError(f"layer '{record.node}' was not visited: {record.reason}")
    return graph.scope(record.scope).nodes()[record.index]


def _in_scope(record: LayerRecord, where: str) -> LayerRecord:
    record.scope = where
    return record


def compiled_layers(model: onnx.ModelProto) -> dict[str, int]:
    """How many layers the model already holds compiled, per onnxsparse op (``MatMulCompress``,
    ``Conv2dCompress``, ``QMatMulCompress``, ``QConv2dCompress``): main graph, subgraph bodies and
    local functions."""
    counts: dict[str, int] = {}
    nodes = [*model.graph.node, *(node for node, _ in nested_nodes(model))]
    for node in nodes:
        if node.domain == DOMAIN and node.op_type in (*SPARSE_OPS, *QUANT_SPARSE_OPS):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def describe_layer(graph: ModelGraph, node: gs.Node, index: int, dtypes: tuple[str, ...] = SUPPORTED_DTYPES,
                   conv1d: bool = False, pad_channels: bool = False, multiple: int = 4) -> LayerRecord:
    """The facts of one top-level layer node, up to its layout or the first reason it fails."""
    outputs = [tensor.name for tensor in node.outputs]
    record = LayerRecord(node=node_label(node.name, node.op, outputs), op=node.op, index=index,
                         attrs=dict(node.attrs))
    if node.inputs:
        record.activation, record.activation_shape = node.inputs[0].name, _shape(node.inputs[0])
    if node.outputs:
        record.output, record.output_shape = outputs[0], _shape(node.outputs[0])
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
    record.source = source.name
    record.shape = tuple(int(d) for d in proto.dims)
    record.dtype = dtype_name(proto.data_type)
    if record.dtype not in dtypes:
        record.reason = f"dtype {record.dtype} is not supported (only {', '.join(dtypes)})"
        return record
    rank = len(record.shape)
    if node.op == "MatMul" and rank != 2:
        record.reason = f"MatMul weight has rank {rank}; only rank-2 weights are supported"
    elif node.op == "Gemm" and rank != 2:
        record.reason = f"Gemm weight has rank {rank}; Gemm needs a rank-2 weight"
    elif node.op == "Conv" and rank == 3 and not conv1d:
        record.reason = "Conv is 1-D (weight rank 3); this caller handles only 2-D Conv"
    elif node.op == "Conv" and rank not in (3, 4):
        record.reason = f"Conv is {rank - 2}-D (weight rank {rank}); only 1-D and 2-D Conv are supported"
    else:
        record.layout = weight_layout(node.op, bool(record.attrs.get("transB", 0)))
        if pad_channels:
            record.padded_channels = pad_target(node.op, record.shape, record.attrs, multiple)
    return record


def _shape(tensor: gs.Tensor) -> Shape | None:
    return None if tensor.shape is None else tuple(tensor.shape)
