"""Finding the layers a pruner may sparsify, on the compiler's layer discovery.

``compiler.layers.find_layers`` finds every Conv/MatMul/Gemm of the main graph with its constant
weight, dtype and SPEC layout, or the reason it has none (the same resolver and reasons as the
compiler's check; any float dtype is accepted here). On top of it this module adds what pruning
needs: K (for Conv: C/group) must be a multiple of M, and a Conv's OC a multiple of its group.
With ``pad_channels`` (opt-in) a 2-D group-1 Conv whose C is not a multiple of M is pruned as the Conv
on C zero-padded to one (``compiler.channel_padding``; ``Layer.padded_channels``): the weight written
back keeps its shape, no graph change.

A weight used by several nodes is one ``Layer`` with several ``uses``: it is pruned once. When one
of its other consumers is not a prunable use with the same sparse axis (an ``Add``, a layer that is
excluded, a MatMul with a different K), pruning it would change that consumer too, so it is skipped.

The head (like an LLM's ``lm_head`` or a classifier) is excluded by default: a layer whose output
reaches a graph output along data edges without passing through another Conv/MatMul/Gemm with a
constant weight, and without being merged on the way with a tensor that carries a layer upstream of
it (a residual ``Add``: a transformer's attention-output and FFN-output projections are not heads).
Data edges leave out shape computations (``Shape``, ``Size``) and shape-like inputs (the shape of a
``Reshape``/``Expand``, the axes of a ``Squeeze``, ...): ``_find_heads``.

Layers inside If/Loop/Scan bodies are found as the compiler finds them (``find_layers(...,
subgraphs=True)``; outer-scope weights included), named ``node (the then_branch of If 'c')``.
Magnitude pruning prunes them; the data-driven methods, ``--max-error`` and ``auto`` leave them
dense with the reason (``pruner.py``). A weight that a body reads other than as a layer weight is
skipped; layers in local functions carry the compiler's reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..compiler import channel_padding
from ..compiler.graph import ModelGraph, nested_nodes, resolve_constant, subgraph_reads, walk_subgraphs
from ..compiler.layers import LayerRecord, find_layers, matches
from ..format import reduction_length
from ..spec import TARGET_OPS, WEIGHT_DTYPES
from . import files

# The pruner works in float64 and writes back in the weight's dtype: every float type will do.
PRUNABLE_DTYPES = tuple(WEIGHT_DTYPES)
@dataclass(frozen=True)
class ConvGeometry:
    """What im2col needs to unfold a Conv's input in SPEC's (kh, kw, c) order."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # h_begin, w_begin, h_end, w_end
    dilations: tuple[int, int]
    group: int
    auto_pad: str


@dataclass(frozen=True)
class Use:
    """One node that multiplies its activation by the weight."""

    node: str  # display name: the node's name, or op_index when it has none
    op_type: str
    activation: str  # the tensor the weight multiplies
    layout: str
    trans_a: bool = False  # Gemm transA: the activation is [K, M]
    conv: ConvGeometry | None = None
    scope: str = ""  # "" (main graph) or the If/Loop/Scan body it is in ("the then_branch of If 'c'")


@dataclass
class Layer:
    """A constant weight and the nodes that use it, pruned as one."""

    weight: str  # the initializer or Constant output that holds the values
    shape: tuple[int, ...]
    dtype: np.dtype
    layout: str
    uses: list[Use] = field(default_factory=list)
    # C4 when the Conv is pruned as if its input channels were zero-padded to it (``--pad-channels``,
    # ``compiler.channel_padding``); ``shape`` stays the weight's own.
    padded_channels: int | None = None

    @property
    def name(self) -> str:
        return "+".join(use.node for use in self.uses)

    @property
    def op_type(self) -> str:
        return self.uses[0].op_type

    @property
    def scope(self) -> str:
        """Where the first use inside a subgraph body is, or "" when every use is in the main graph."""
        return next((use.scope for use in self.uses if use.scope), "")

    @property
    def groups(self) -> int:
        """Conv groups: the rows and K split into this many independent blocks."""
        conv = self.uses[0].conv
        return conv.group if conv else 1

    @property
    def params(self) -> int:
        return int(np.prod(self.shape))

    @property
    def k(self) -> int:
        return reduction_length(self.shape, self.layout)


@dataclass(frozen=True)
class Skipped:
    """A Conv/MatMul/Gemm that will not be pruned, and why."""

    node: str
    op_type: str
    weight: str
    reason: str


@dataclass
class LayerScan:
    layers: list[Layer]
    skipped: list[Skipped]
    heads: set[str]  # display names of the head nodes


def node_names(graph: onnx.GraphProto) -> list[str]:
    """A display name for every node: its name, or ``<op_type>_<index>`` when it has none."""
    names, seen = [], set()
    for index, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{index}"
        if name in seen:
            name = f"{name}_{index}"
        seen.add(name)
        names.append(name)
    return names


def _conv_geometry(attrs: dict, shape: tuple[int, ...]) -> ConvGeometry:
    kernel = tuple(attrs.get("kernel_shape", shape[2:]))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    return ConvGeometry(
        kernel=(int(kernel[0]), int(kernel[1])),
        strides=tuple(int(v) for v in attrs.get("strides", (1, 1))),
        pads=tuple(int(v) for v in attrs.get("pads", (0, 0, 0, 0))),
        dilations=tuple(int(v) for v in attrs.get("dilations", (1, 1))),
        group=int(attrs.get("group", 1)),
        auto_pad=auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad),
    )


def _use(record: LayerRecord, name: str, m: int, pad_channels: bool = False) -> Use | str:
    """How a layer discovery found with a layout uses its weight, or why it cannot be pruned to N:M
    (a C that discovery padded, ``record.padded_channels``, is a multiple of M)."""
    shape, conv = record.shape, None
    if record.layout == "oihw":
        conv = _conv_geometry(record.attrs, shape)
        if shape[0] % conv.group:
            return f"OC={shape[0]} is not a multiple of group={conv.group}"
        if shape[1] % m and not record.padded_channels:
            refused = f"; {channel_padding.refusal(record.op, shape, record.attrs)}" if pad_channels else ""
            return f"C/group={shape[1]} is not a multiple of {m}{refused}"
    else:
        k = reduction_length(shape, record.layout)
        if k % m:
            return f"K={k} is not a multiple of {m}"
    return Use(node=name, op_type=record.op, activation=record.activation, layout=record.layout,
               trans_a=bool(record.attrs.get("transA", 0)), conv=conv, scope=record.scope)


# Inputs that give a shape, sizes, axes or counts rather than data: never followed by the head search.
SHAPE_INPUTS = {
    "Reshape": {1}, "Expand": {1}, "Tile": {1}, "ConstantOfShape": {0}, "Range": {0, 1, 2},
    "Slice": {1, 2, 3, 4}, "Pad": {1, 3}, "Resize": {1, 2, 3}, "Upsample": {1}, "Squeeze": {1},
    "Unsqueeze": {1}, "Split": {1}, "TopK": {1}, "OneHot": {1}, "CenterCropPad": {1},
    "ReduceSum": {1}, "ReduceMean": {1}, "ReduceMax": {1}, "ReduceMin": {1}, "ReduceProd": {1},
    "ReduceL1": {1}, "ReduceL2": {1}, "ReduceLogSum": {1}, "ReduceLogSumExp": {1}, "ReduceSumSquare": {1},
}
# Nodes whose output is a shape or a size of their input, not a function of its values.
SHAPE_OPS = {"Shape", "Size"}


def data_inputs(node: onnx.NodeProto) -> list[str]:
    """The inputs whose values flow into the node's outputs (shape-like inputs left out), plus the
    outer tensors its subgraphs read."""
    if node.op_type in SHAPE_OPS:
        return []
    skip = SHAPE_INPUTS.get(node.op_type, set())
    return [t for i, t in enumerate(node.input) if t and i not in skip] + subgraph_reads(node)


def _find_heads(graph: onnx.GraphProto, names: list[str], weighted: set[str]) -> set[str]:
    """The heads: layers whose output reaches a graph output along data edges without passing
    through another layer, and without being merged on the way with a tensor that carries the output
    of a layer upstream of them (a residual ``Add`` around them merges paths; two parallel heads on
    one trunk merged by a ``Concat`` stay heads).

    Per tensor, in graph order: ``upstream`` (every layer on a data path into it), ``nearest`` (the
    last layer on each data path into it) and ``alone`` (the layers that reach it unmerged)."""
    weighted_index = {index for index, name in enumerate(names) if name in weighted}
    upstream: dict[str, frozenset] = {}
    nearest: dict[str, frozenset] = {}
    alone: dict[str, frozenset] = {}
    empty: frozenset = frozenset()
    upstream_of: dict[int, frozenset] = {}  # layer -> the layers upstream of it
    for index, node in enumerate(graph.node):
        inputs = data_inputs(node)
        if index in weighted_index:
            # A layer's data input is its activation (the weight is a constant, not data).
            act = node.input[0] if node.input else ""
            if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[0] not in upstream \
                    and node.input[1] in upstream:
                act = node.input[1]
            up = upstream.get(act, empty) | {index}
            near = al = frozenset({index})
        else:
            up = frozenset().union(*(upstream.get(t, empty) for t in inputs))
            near = frozenset().union(*(nearest.get(t, empty) for t in inputs))
            merged = set()
            for i, tensor in enumerate(inputs):
                for layer in alone.get(tensor, empty):
                    before = upstream_of[layer]
                    others = [t for j, t in enumerate(inputs) if j != i and t != tensor]
                    # Merged when another operand carries a layer upstream of this one (this is the
                    # residual branch) or was computed from this one's output (this is the skip).
                    if not any(nearest.get(t, empty) & before or layer in upstream.get(t, empty) for t in others):
                        merged.add(layer)
            al = frozenset(merged)
        if index in weighted_index:
            upstream_of[index] = up - {index}
        for out in node.output:
            upstream[out], nearest[out], alone[out] = up, near, al
    heads = set()
    for out in graph.output:
        heads |= {names[index] for index in alone.get(out.name, empty)}
    return heads


def scan_layers(
    model: onnx.ModelProto,
    m: int = 4,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    prune_head: bool = False,
    pad_channels: bool = False,
) -> LayerScan:
    """Every Conv/MatMul/Gemm of the main graph: the layers to prune, and the rest with reasons.

    ``include``/``exclude``: fnmatch patterns on node names and op types (include all when empty).
    ``pad_channels``: a 2-D Conv with group 1 whose C is not a multiple of M is a candidate too,
    pruned as the Conv on C zero-padded to a multiple of M (``Layer.padded_channels``).
    """
    graph = model.graph
    names = node_names(graph)
    mg = ModelGraph(model)
    nodes = mg.nodes()

    def source_of(tensor) -> str | None:
        source, _ = resolve_constant(mg, tensor)
        return None if source is None else source.name

    candidates: dict[str, list] = {}  # source -> [(use, shape, dtype, padded channels)]
    skipped: list[Skipped] = []
    weighted: set[str] = set()
    for record in find_layers(mg, dtypes=PRUNABLE_DTYPES, subgraphs=True, pad_channels=pad_channels, multiple=m):
        name = names[record.index] if not record.scope else f"{record.node} ({record.scope})"
        if not record.visited:  # local functions: the compiler's reason
            skipped.append(Skipped(name, record.op, record.weight or "", record.reason or "not visited"))
            continue
        found = _use(record, name, m, pad_channels) if record.reason is None else record.reason
        if isinstance(found, str):
            skipped.append(Skipped(name, record.op, record.weight or "", found))
            if not record.scope:
                node = nodes[record.index]
                if record.source is not None or (node.inputs and source_of(node.inputs[0]) is not None):
                    weighted.add(name)
            continue
        if not record.scope:
            weighted.add(name)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(WEIGHT_DTYPES[record.dtype][0])
        candidates.setdefault(record.source, []).append((found, record.shape, dtype, record.padded_channels))

    heads = _find_heads(graph, names, weighted)
    # Every consumer of each source (through Identity), to spot weights shared with other nodes.
    consumers: dict[str, list[str]] = {}
    for node, name in zip(nodes, names):
        if node.op == "Identity":
            continue
        for index, tensor in enumerate(node.inputs):
            source = source_of(tensor) if tensor.name else None
            if source in candidates:
                is_weight_use = node.op in TARGET_OPS and index == 1
                consumers.setdefault(source, []).append(name if is_weight_use else f"{name} ({node.op})")
    output_sources = {source_of(tensor) for tensor in mg.graph.outputs}
    # Reads of each name inside bodies that are not one of its layer uses there (a body's own
    # initializer of the same name is another tensor, but counting it only errs on the safe side).
    body_reads: dict[str, int] = {}
    for node, _ in nested_nodes(model):
        for index, tensor in enumerate(node.input):
            if tensor in candidates and not (node.op_type in TARGET_OPS and index == 1):
                body_reads[tensor] = body_reads.get(tensor, 0) + 1

    layers: list[Layer] = []
    for source, uses in candidates.items():
        first_use, shape, dtype, padded = uses[0]
        uses = [entry[:3] for entry in uses]
        use_names = {use.node for use, _, _ in uses}
        weight_label = source

        def skip_all(reason: str) -> None:
            skipped.extend(Skipped(use.node, use.op_type, weight_label, reason) for use, _, _ in uses)

        others = [c for c in consumers.get(source, []) if c not in use_names]
        if others:
            skip_all(f"weight shared with {', '.join(sorted(set(others)))}, which pruning would change")
            continue
        if source in output_sources:
            skip_all("weight is also a graph output")
            continue
        if body_reads.get(source):
            skip_all("weight is also read inside a subgraph by a node that is not a layer")
            continue
        kinds = {(use.layout, use.conv.group if use.conv else 1) for use, _, _ in uses}
        if len(kinds) > 1:
            skip_all("weight shared by nodes with different sparse axes")
            continue
        excluded = []
        for use, _, _ in uses:
            if include and not matches(include, use.node, use.op_type):
                excluded.append((use, "not matched by --include"))
            elif exclude and matches(exclude, use.node, use.op_type):
                excluded.append((use, "excluded by --exclude"))
            elif use.node in heads and not prune_head:
                excluded.append((use, "head (last layer before a graph output) is kept dense by default; --prune-head prunes it"))
        if excluded:
            reasons = {use.node: reason for use, reason in excluded}
            for use, _, _ in uses:
                reason = reasons.get(use.node) or f"weight shared with {excluded[0][0].node}, which is not selected"
                skipped.append(Skipped(use.node, use.op_type, weight_label, reason))
            continue
        layers.append(Layer(weight=source, shape=shape, dtype=np.dtype(dtype), layout=first_use.layout,
                            uses=[u for u, _, _ in uses], padded_channels=padded))
    order = {name: index for index, name in enumerate(names)}
    layers.sort(key=lambda layer: order.get(layer.uses[0].node, len(order)))
    skipped.sort(key=lambda s: order.get(s.node, len(order)))
    return LayerScan(layers=layers, skipped=skipped, heads=heads)


def _constant_tensor(graph: onnx.GraphProto, name: str) -> onnx.TensorProto:
    """The TensorProto named ``name``: an initializer, or the value of the Constant node producing it;
    in the main graph first, then in the If/Loop/Scan bodies."""
    graphs = [graph] + [body for _, body in walk_subgraphs(graph.node)]
    for body in graphs:
        for tensor in body.initializer:
            if tensor.name == name:
                return tensor
        for node in body.node:
            if node.op_type == "Constant" and name in node.output:
                return next(a.t for a in node.attribute if a.name == "value")
    raise KeyError(name)


def read_weight(model: onnx.ModelProto, layer: Layer) -> np.ndarray:
    """The weight's values (from its file when it stays there: ``files``)."""
    tensor = _constant_tensor(model.graph, layer.weight)
    store = files.active()
    if store is not None and files.is_external(tensor):
        return store.read(tensor)
    return numpy_helper.to_array(tensor)


def write_weight(model: onnx.ModelProto, layer: Layer, value: np.ndarray) -> None:
    """Replace the weight's values in place (initializer or Constant), keeping name and dtype; a
    weight that stays in a file gets its new values in the pruner's scratch file (``files``)."""
    tensor = _constant_tensor(model.graph, layer.weight)
    store = files.active()
    if store is not None and files.is_external(tensor):
        store.write(tensor, np.asarray(value))
        return
    tensor.CopyFrom(numpy_helper.from_array(np.asarray(value).astype(layer.dtype), tensor.name))


def weight_params(model: onnx.ModelProto) -> int:
    """Parameters of every distinct constant weight of the graph's Conv/MatMul/Gemm nodes
    (for MatMul and Gemm, a constant first operand counts as well)."""
    mg = ModelGraph(model)
    sources = {}
    for node in mg.nodes():
        if node.op in TARGET_OPS and len(node.inputs) > 1:
            for tensor in node.inputs[:2] if node.op != "Conv" else node.inputs[1:2]:
                source, _ = resolve_constant(mg, tensor)
                if source is not None:
                    sources[source.name] = source
    return sum(int(np.prod(source.proto().dims)) for source in sources.values())
