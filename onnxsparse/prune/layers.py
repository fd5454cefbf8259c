"""Finding the layers a pruner may sparsify: node + constant weight + SPEC layout.

A prunable layer is a ``MatMul`` (weight = input B, ``[K, N]``, layout ``"kn"``), a ``Gemm``
(weight = B; ``"nk"`` with transB=1, else ``"kn"``) or a 2-D ``Conv`` (``"oihw"``, K = KH*KW*C/group,
groups of M along C), whose weight is constant: an initializer, a ``Constant`` node's output, or
an ``Identity`` of either, and not also a graph input. K (for Conv: C/group) must be a multiple
of M. Every layer that is not prunable gets a reason.

A weight used by several nodes is one ``Layer`` with several ``uses``: it is pruned once. When one
of its other consumers is not a prunable use with the same sparse axis (an ``Add``, a layer that is
excluded, a MatMul with a different K), pruning it would change that consumer too, so it is skipped.

The head (the last Conv/MatMul/Gemm with a constant weight on the way to each graph output, like
an LLM's ``lm_head``) is excluded by default. Subgraphs (If/Loop/Scan bodies) are not searched;
a weight that a subgraph also reads is skipped.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..format import reduction_length

LAYER_OPS = ("Conv", "MatMul", "Gemm")
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}


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


@dataclass
class Layer:
    """A constant weight and the nodes that use it, pruned as one."""

    weight: str  # the initializer or Constant output that holds the values
    shape: tuple[int, ...]
    dtype: np.dtype
    layout: str
    uses: list[Use] = field(default_factory=list)

    @property
    def name(self) -> str:
        return "+".join(use.node for use in self.uses)

    @property
    def op_type(self) -> str:
        return self.uses[0].op_type

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


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _Constants:
    """Resolve a tensor name to the initializer / Constant output holding its value."""

    def __init__(self, graph: onnx.GraphProto):
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_inputs = {i.name for i in graph.input}
        self.producer = {out: node for node in graph.node for out in node.output}

    def source(self, name: str) -> tuple[str | None, str]:
        """(source name, "") when constant; (None, reason) when not."""
        seen = set()
        while name not in seen:
            seen.add(name)
            if name in self.graph_inputs:
                return None, f"weight '{name}' is a graph input, not a constant"
            if name in self.initializers:
                return name, ""
            node = self.producer.get(name)
            if node is None:
                return None, f"weight '{name}' has no producer"
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                if not any(a.name == "value" for a in node.attribute):
                    return None, f"weight '{name}' is a Constant without a tensor value"
                return name, ""
            if node.op_type == "Identity" and node.domain in ("", "ai.onnx"):
                name = node.input[0]
                continue
            return None, f"weight '{name}' is computed by {node.op_type}, not constant"
        return None, f"weight '{name}' is in a cycle"

    def tensor(self, source: str) -> onnx.TensorProto:
        if source in self.initializers:
            return self.initializers[source]
        node = self.producer[source]
        return next(a.t for a in node.attribute if a.name == "value")


def _conv_geometry(node: onnx.NodeProto, shape: tuple[int, ...]) -> ConvGeometry:
    attrs = _attrs(node)
    kernel = tuple(attrs.get("kernel_shape", shape[2:]))
    return ConvGeometry(
        kernel=(int(kernel[0]), int(kernel[1])),
        strides=tuple(int(v) for v in attrs.get("strides", (1, 1))),
        pads=tuple(int(v) for v in attrs.get("pads", (0, 0, 0, 0))),
        dilations=tuple(int(v) for v in attrs.get("dilations", (1, 1))),
        group=int(attrs.get("group", 1)),
        auto_pad=attrs.get("auto_pad", b"NOTSET").decode(),
    )


def _candidate(node: onnx.NodeProto, name: str, constants: _Constants, m: int):
    """(source, Use, shape, dtype) for a prunable node, or a Skipped with the reason."""
    op = node.op_type

    def skip(weight: str, reason: str) -> Skipped:
        return Skipped(name, op, weight, reason)

    if len(node.input) < 2:
        return skip("", "has no weight input")
    weight = node.input[1]
    source, reason = constants.source(weight)
    if source is None:
        if op == "MatMul" and constants.source(node.input[0])[0] is not None:
            return skip(node.input[0], "the constant is MatMul's first operand (W @ X); only X @ W is pruned")
        return skip(weight, reason)
    tensor = constants.tensor(source)
    if tensor.data_type not in FLOAT_TYPES:
        return skip(weight, f"weight dtype {onnx.TensorProto.DataType.Name(tensor.data_type)} is not a float type")
    shape = tuple(int(d) for d in tensor.dims)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    attrs = _attrs(node)
    conv = None
    trans_a = False
    if op == "MatMul":
        if len(shape) != 2:
            return skip(weight, f"MatMul weight has rank {len(shape)}, not 2")
        layout = "kn"
    elif op == "Gemm":
        layout = "nk" if attrs.get("transB", 0) else "kn"
        trans_a = bool(attrs.get("transA", 0))
        if len(shape) != 2:
            return skip(weight, f"Gemm weight has rank {len(shape)}, not 2")
    else:  # Conv
        if len(shape) != 4:
            return skip(weight, f"not a 2-D Conv (weight rank {len(shape)})")
        layout = "oihw"
        conv = _conv_geometry(node, shape)
        if shape[0] % conv.group:
            return skip(weight, f"OC={shape[0]} is not a multiple of group={conv.group}")
        if shape[1] % m:
            return skip(weight, f"C/group={shape[1]} is not a multiple of {m}")
    if layout != "oihw":
        k = reduction_length(shape, layout)
        if k % m:
            return skip(weight, f"K={k} is not a multiple of {m}")
    use = Use(node=name, op_type=op, activation=node.input[0], layout=layout, trans_a=trans_a, conv=conv)
    return source, use, shape, dtype


def _find_heads(graph: onnx.GraphProto, names: list[str], weighted: set[str]) -> set[str]:
    """The last node with a constant weight on each path back from every graph output."""
    producer = {out: (index, node) for index, node in enumerate(graph.node) for out in node.output}
    heads, seen = set(), set()
    stack = [out.name for out in graph.output]
    while stack:
        tensor = stack.pop()
        if tensor in seen or tensor not in producer:
            continue
        seen.add(tensor)
        index, node = producer[tensor]
        if names[index] in weighted:
            heads.add(names[index])
            continue
        stack.extend(i for i in node.input if i)
    return heads


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    reads = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                for inner in sub.node:
                    reads.update(inner.input)
                reads |= _subgraph_reads(sub)
    return reads


def matches(patterns: list[str], name: str, op_type: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(op_type, p) for p in patterns)


def scan_layers(
    model: onnx.ModelProto,
    m: int = 4,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    prune_head: bool = False,
) -> LayerScan:
    """Every Conv/MatMul/Gemm of the main graph: the layers to prune, and the rest with reasons.

    ``include``/``exclude``: fnmatch patterns on node names and op types (include all when empty).
    """
    graph = model.graph
    names = node_names(graph)
    constants = _Constants(graph)
    candidates: dict[str, list] = {}  # source -> [(use, shape, dtype)]
    skipped: list[Skipped] = []
    weighted: set[str] = set()
    for node, name in zip(graph.node, names):
        if node.op_type not in LAYER_OPS or node.domain not in ("", "ai.onnx"):
            continue
        found = _candidate(node, name, constants, m)
        if isinstance(found, Skipped):
            skipped.append(found)
            if constants.source(found.weight)[0] is not None:
                weighted.add(name)
            continue
        weighted.add(name)
        source, use, shape, dtype = found
        candidates.setdefault(source, []).append((use, shape, dtype))

    heads = _find_heads(graph, names, weighted)
    # Every consumer of each source (through Identity), to spot weights shared with other nodes.
    consumers: dict[str, list[str]] = {}
    for node, name in zip(graph.node, names):
        if node.op_type == "Identity":
            continue
        for index, tensor in enumerate(node.input):
            source = constants.source(tensor)[0] if tensor else None
            if source in candidates:
                is_weight_use = node.op_type in LAYER_OPS and index == 1
                consumers.setdefault(source, []).append(name if is_weight_use else f"{name} ({node.op_type})")
    output_names = {o.name for o in graph.output}
    subgraph_reads = _subgraph_reads(graph)

    layers: list[Layer] = []
    for source, uses in candidates.items():
        first_use, shape, dtype = uses[0]
        use_names = {use.node for use, _, _ in uses}
        weight_label = source

        def skip_all(reason: str) -> None:
            skipped.extend(Skipped(use.node, use.op_type, weight_label, reason) for use, _, _ in uses)

        others = [c for c in consumers.get(source, []) if c not in use_names]
        if others:
            skip_all(f"weight shared with {', '.join(sorted(set(others)))}, which pruning would change")
            continue
        if source in output_names or any(constants.source(o)[0] == source for o in output_names):
            skip_all("weight is also a graph output")
            continue
        if source in subgraph_reads:
            skip_all("weight is also read inside a subgraph")
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
        layers.append(Layer(weight=source, shape=shape, dtype=np.dtype(dtype), layout=first_use.layout, uses=[u for u, _, _ in uses]))
    order = {name: index for index, name in enumerate(names)}
    layers.sort(key=lambda layer: order[layer.uses[0].node])
    skipped.sort(key=lambda s: order.get(s.node, 0))
    return LayerScan(layers=layers, skipped=skipped, heads=heads)


def read_weight(model: onnx.ModelProto, layer: Layer) -> np.ndarray:
    return numpy_helper.to_array(_Constants(model.graph).tensor(layer.weight))


def write_weight(model: onnx.ModelProto, layer: Layer, value: np.ndarray) -> None:
    """Replace the weight's values in place (initializer or Constant), keeping name and dtype."""
    tensor = _Constants(model.graph).tensor(layer.weight)
    tensor.CopyFrom(numpy_helper.from_array(np.asarray(value).astype(layer.dtype), tensor.name))


def weight_params(model: onnx.ModelProto) -> int:
    """Parameters of every distinct constant weight of the graph's Conv/MatMul/Gemm nodes."""
    constants = _Constants(model.graph)
    sources = set()
    for node in model.graph.node:
        if node.op_type in LAYER_OPS and len(node.input) > 1:
            for tensor in node.input[:2]:
                source = constants.source(tensor)[0]
                if source is not None and (node.op_type != "Conv" or tensor == node.input[1]):
                    sources.add(source)
    return sum(int(np.prod(constants.tensor(s).dims)) for s in sources)
