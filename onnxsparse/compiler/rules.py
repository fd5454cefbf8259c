"""The rewrite rules: one per form a layer can take, each ``check -> reason -> rewrite``.

A rule's ``check`` looks at one eligible layer's node once and returns either a ``Match`` (all the
rewrite needs) or the reason it does not apply, one sentence; ``rewrite`` then builds the new
nodes from the match without looking again. The rewrite pass tries the rules for a layer's op in
order and records the reason of every rule that did not apply, so a bias that is not folded has
its reason as surely as a layer that is not rewritten.

Rewrites (domain ``onnxsparse``, opset 1; the new node is named ``<original name>_sparse``):

- ``MatMulBiasAdd``: ``MatMul(A, W)`` whose product's only consumer is an ``Add`` of a constant
  row of N (shapes ``[N]``, ``[1]``, ``[]``, ``[1, .., 1, N]`` of rank at most the product's), and
  whose product is not a graph output -> ``MatMulCompress(A, values, index, bias)``; the Add goes:
  the kernels add the bias in their epilogue, which saves a pass over the output.
- ``MatMul``: ``MatMul(A, W)`` -> ``MatMulCompress(A, values, index)``.
- ``Gemm``: ``Gemm(A, B, C, alpha, beta, transA, transB)`` -> ``MatMulCompress(A, values, index,
  bias, alpha, transA)`` with ``(values, index) = CompressOp(B, layout="nk" if transB else "kn")``.
  Gemm computes ``alpha * A' @ B' + beta * C``; MatMulCompress computes ``alpha * (A' @ W) + bias``
  with W = B' (the layout absorbs transB), so:
  - C absent -> no bias;
  - C constant and broadcastable as a row of N (shapes ``[N]``, ``[1, N]``, ``[1]``, ``[]``,
    ``[1, 1]``) -> ``bias = broadcast(beta * C, [N])``, computed in fp32 and rounded once to C's
    dtype (C itself when beta = 1 and C is already ``[N]``);
  - any other C -> ``Add(MatMulCompress(...), Mul(C, beta))`` (no Mul when beta = 1).
- ``Conv``: ``Conv(X, W, B?, strides, pads, dilations, group, auto_pad)``
  -> ``Conv2dCompress(X, values, index, B?, kernel_shape=[KH, KW], same attributes)``, with
  ``(values, index) = CompressOp(W, layout="oihw")``.
  A 1-D Conv (X ``[N, C, L]``, W ``[OC, C/group, KW]``) is the same Conv on ``[N, C, 1, L]``:
  ``Conv(X, W) -> Squeeze(Conv2dCompress(Unsqueeze(X, 2), values, index, B?), 2)`` with
  ``kernel_shape=[1, KW]``, ``strides=[1, s]``, ``dilations=[1, d]``, ``pads=[0, b, 0, e]``, the
  same ``group`` and ``auto_pad``, and the weight compressed as ``W[:, :, None, :]``.
  A Conv whose record carries ``padded_channels`` C4 (``--pad-channels``; ``channel_padding``):
  ``Conv(X, W) -> Conv2dCompress(Pad(X, C4 - C zero channels), values, index, B?)`` with the weight
  compressed with C4 - C zero input channels appended (exact: the added channels are zero on both sides).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ..spec import CONV2D_COMPRESS, DOMAIN, MATMUL_COMPRESS, ONNX_DOMAINS
from . import channel_padding
from .graph import ModelGraph, constant_array, constant_proto, is_omitted, make_constant, np_dtype, resolve_constant
from .layers import LayerRecord


@dataclass
class Match:
    """What a rule's check found on one node: all its rewrite needs."""

    rule: "Rule"
    node: gs.Node
    weight: gs.Tensor  # the constant holding the weight (through Identity chains)
    data_type: int  # the weight's TensorProto type
    shape: tuple[int, ...]  # the weight's shape
    add: gs.Node | None = None  # MatMulBiasAdd: the Add folded as bias
    folded_add: str | None = None  # its name (or its output's, when it has none)
    bias: gs.Tensor | None = None  # the bias row as it is, when it is already [N]
    bias_row: np.ndarray | None = field(default=None, repr=False)  # else its values, broadcast to [N]
    not_folded: str | None = None  # why no bias is folded into the sparse op (a rule's reason)
    padded_channels: int | None = None  # Conv: C4 when X and W are zero-padded to it (channel_padding)


class Rule:
    """One form of layer the rewrite knows: ``check`` (a ``Match`` or the reason it does not apply), ``rewrite``."""

    op = ""

    @property
    def name(self) -> str:
        return type(self).__name__

    def check(self, graph: ModelGraph, node: gs.Node, record: LayerRecord) -> Match | str:
        raise NotImplementedError

    def rewrite(self, graph: ModelGraph, match: Match, sparse: tuple[gs.Tensor, gs.Tensor]) -> gs.Node:
        """Replace the node; ``sparse`` is the ``(values, index)`` pair of the weight's CompressOp."""
        raise NotImplementedError

    def _weight(self, graph: ModelGraph, node: gs.Node, record: LayerRecord) -> Match | str:
        if node.op != self.op or len(node.inputs) < 2:
            return f"node is a {node.op}, not a {self.op} with a weight"
        source, why_not = resolve_constant(graph, node.inputs[1])
        if source is None or source.name != record.source:
            return why_not or f"the weight is not the constant '{record.source}' the check found"
        return Match(self, node, source.tensor, constant_proto(source.tensor).data_type, record.shape)


class MatMulBiasAdd(Rule):
    """MatMul followed by the Add of a constant row of N: the row becomes the sparse op's bias."""

    op = "MatMul"

    def check(self, graph: ModelGraph, node: gs.Node, record: LayerRecord) -> Match | str:
        match = self._weight(graph, node, record)
        if isinstance(match, str):
            return match
        n = record.shape[1]
        product = node.outputs[0]
        if any(out is product for out in graph.graph.outputs):
            return "the product is a graph output"
        if len(product.outputs) != 1:
            return f"the product has {len(product.outputs)} consumers, not one Add"
        add = product.outputs[0]
        if add.op != "Add" or add.domain not in ONNX_DOMAINS or len(add.inputs) != 2 or len(add.outputs) != 1:
            return f"the product is read by a {add.op}, not by an Add of two inputs"
        if add.inputs[0] is add.inputs[1]:
            return "the Add adds the product to itself"
        row = add.inputs[1] if add.inputs[0] is product else add.inputs[0]
        source, why_not = resolve_constant(graph, row)
        if source is None:
            return f"the Add's other input is not constant ({why_not})"
        proto = constant_proto(source.tensor)
        dims = tuple(proto.dims)
        # The row must not raise the product's rank by broadcasting (A [K] @ W gives [N]; A [..., K] keeps its rank).
        a_shape = node.inputs[0].shape
        product_rank = 1 if a_shape is None or len(a_shape) <= 1 else len(a_shape)
        if proto.data_type != match.data_type:
            return "the Add's constant has another dtype than the weight"
        if len(dims) > product_rank or any(d != 1 for d in dims[:-1]) or (dims and dims[-1] not in (1, n)):
            return f"the Add's constant of shape {list(dims)} is not a row of N={n}"
        match.add, match.folded_add = add, add.name or add.outputs[0].name
        if dims == (n,):
            match.bias = row
        else:
            match.bias_row = np.broadcast_to(constant_array(source.tensor).reshape(-1), (n,)).copy()
        return match

    def rewrite(self, graph: ModelGraph, match: Match, sparse: tuple[gs.Tensor, gs.Tensor]) -> gs.Node:
        node, add = match.node, match.add
        bias = match.bias
        if bias is None:
            bias = make_constant(graph.unique_name(f"{match.folded_add}_bias"), match.bias_row)
        outputs = list(add.outputs)
        graph.remove_node(add)
        return replace_node(graph, node, MATMUL_COMPRESS, [node.inputs[0], *sparse, bias], {}, outputs=outputs)


class MatMul(Rule):
    """Any other eligible MatMul: no bias."""

    op = "MatMul"

    def check(self, graph: ModelGraph, node: gs.Node, record: LayerRecord) -> Match | str:
        return self._weight(graph, node, record)

    def rewrite(self, graph: ModelGraph, match: Match, sparse: tuple[gs.Tensor, gs.Tensor]) -> gs.Node:
        inputs = [match.node.inputs[0], *sparse]
        if match.bias_row is not None:  # a BatchNormalization folded in (fold_batchnorm)
            base = match.node.name or match.node.outputs[0].name
            inputs.append(make_constant(graph.unique_name(f"{base}_bias"), match.bias_row))
        return replace_node(graph, match.node, MATMUL_COMPRESS, inputs, {})


class Gemm(Rule):
    op = "Gemm"

    def check(self, graph: ModelGraph, node: gs.Node, record: LayerRecord) -> Match | str:
        match = self._weight(graph, node, record)
        if isinstance(match, str):
            return match
        c = node.inputs[2] if len(node.inputs) > 2 and not is_omitted(node.inputs[2]) else None
        if c is None:
            return match
        n = record.shape[0] if record.layout == "nk" else record.shape[1]
        beta = float(node.attrs.get("beta", 1.0))
        c_source, why_not = resolve_constant(graph, c)
        if c_source is None:
            match.not_folded = f"C is not constant ({why_not}); it is added after the sparse op"
            return match
        dims = tuple(constant_proto(c_source.tensor).dims)
        if not _is_row(dims, n):
            match.not_folded = f"C of shape {list(dims)} is not a row of N={n}; it is added after the sparse op"
            return match
        c_values = constant_array(c_source.tensor)
        if beta == 1.0 and c_values.shape == (n,):
            match.bias = c
        else:
            folded = np.broadcast_to(np.float32(beta) * c_values.astype(np.float32).reshape(-1), (n,))
            match.bias_row = folded.astype(c_values.dtype)
        return match

    def rewrite(self, graph: ModelGraph, match: Match, sparse: tuple[gs.Tensor, gs.Tensor]) -> gs.Node:
        node = match.node
        alpha = float(node.attrs.get("alpha", 1.0))
        beta = float(node.attrs.get("beta", 1.0))
        attrs = {}
        if alpha != 1.0:
            attrs["alpha"] = alpha
        if node.attrs.get("transA", 0):
            attrs["transA"] = 1
        inputs = [node.inputs[0], *sparse]
        base = node.name or node.outputs[0].name
        if match.bias is not None or match.bias_row is not None:
            bias = match.bias
            if bias is None:
                bias = make_constant(graph.unique_name(f"{base}_bias"), match.bias_row)
            return replace_node(graph, node, MATMUL_COMPRESS, [*inputs, bias], attrs)
        if match.not_folded is None:  # C absent
            return replace_node(graph, node, MATMUL_COMPRESS, inputs, attrs)

        # C is not a constant row: MatMulCompress, then add beta * C as Gemm would.
        c = node.inputs[2]
        y = node.outputs[0]
        product = gs.Variable(graph.unique_name(f"{y.name}_matmul"), dtype=y.dtype, shape=y.shape)
        new_node = replace_node(graph, node, MATMUL_COMPRESS, inputs, attrs, outputs=[product])
        addend, last = c, new_node
        if beta != 1.0:
            beta_tensor = make_constant(graph.unique_name(f"{base}_beta"), np.array(beta, dtype=np_dtype(match.data_type)))
            addend = gs.Variable(graph.unique_name(f"{base}_beta_c"), dtype=y.dtype)
            mul = gs.Node("Mul", name=graph.unique_name(f"{base}_sparse_beta"), inputs=[c, beta_tensor], outputs=[addend])
            last = graph.add_node(mul, after=new_node)
        add = gs.Node("Add", name=graph.unique_name(f"{base}_sparse_bias"), inputs=[product, addend], outputs=[y])
        graph.add_node(add, after=last)
        return new_node


class Conv(Rule):
    op = "Conv"

    def check(self, graph: ModelGraph, node: gs.Node, record: LayerRecord) -> Match | str:
        match = self._weight(graph, node, record)
        if isinstance(match, Match) and len(match.shape) == 3:
            x_shape = node.inputs[0].shape
            if x_shape is not None and len(x_shape) != 3:
                return f"1-D Conv input X has rank {len(x_shape)}, not 3"
        if isinstance(match, Match) and record.padded_channels:
            opset = graph.onnx_opset()
            if record.dtype == "bfloat16" and opset < channel_padding.BFLOAT16_PAD_OPSET:
                return (f"zero-padding C needs a Pad of bfloat16, which ONNX Runtime runs from opset "
                        f"{channel_padding.BFLOAT16_PAD_OPSET} (the model has {opset})")
            match.padded_channels = record.padded_channels
        return match

    def rewrite(self, graph: ModelGraph, match: Match, sparse: tuple[gs.Tensor, gs.Tensor]) -> gs.Node:
        node = match.node
        attrs = dict(node.attrs)
        attrs.setdefault("kernel_shape", list(match.shape[2:]))
        x = node.inputs[0]
        if match.padded_channels:
            x = channel_padding.pad_input(graph, node, x, match.shape[1], match.padded_channels)
        inputs = [x, *sparse]
        if len(node.inputs) > 2 and not is_omitted(node.inputs[2]):
            inputs.append(node.inputs[2])
        if len(match.shape) == 3:
            return _rewrite_conv1d(graph, node, inputs, attrs)
        return replace_node(graph, node, CONV2D_COMPRESS, inputs, attrs)


def conv1d_as_2d(attrs: dict) -> dict:
    """A 1-D Conv's attributes for the same Conv on ``[N, C, 1, L]``: H gets kernel 1, stride 1,
    dilation 1 and no padding (SAME_* pads nothing along H with a kernel of 1)."""
    out = dict(attrs)
    out["kernel_shape"] = [1, *attrs["kernel_shape"]]
    for name in ("strides", "dilations"):
        if name in attrs:
            out[name] = [1, *attrs[name]]
    if "pads" in attrs:
        begin, end = attrs["pads"]
        out["pads"] = [0, begin, 0, end]
    return out


def _rewrite_conv1d(graph: ModelGraph, node: gs.Node, inputs: list, attrs: dict) -> gs.Node:
    """``Conv(X[N, C, L])`` -> ``Squeeze(Conv2dCompress(Unsqueeze(X, 2)), 2)`` with H=1."""
    base = node.name or node.outputs[0].name
    x, y = inputs[0], node.outputs[0]
    x_shape, y_shape = _with_h1(x.shape), _with_h1(y.shape)  # unknown: AnnotateShapes looks again
    x4 = gs.Variable(graph.unique_name(f"{x.name}_h1"), dtype=x.dtype, shape=x_shape)
    y4 = gs.Variable(graph.unique_name(f"{y.name}_h1"), dtype=y.dtype, shape=y_shape)
    new = replace_node(graph, node, CONV2D_COMPRESS, [x4, *inputs[1:]], conv1d_as_2d(attrs), outputs=[y4])
    graph.add_node(_axis_node(graph, "Unsqueeze", x, x4, f"{base}_unsqueeze"), before=new)
    graph.add_node(_axis_node(graph, "Squeeze", y4, y, f"{base}_squeeze"), after=new)
    return new


def _with_h1(shape) -> list | None:
    """``[N, C, L]`` -> ``[N, C, 1, L]``; None when any dimension is unknown."""
    if shape is None or len(shape) != 3 or any(d is None for d in shape):
        return None
    return [shape[0], shape[1], 1, shape[2]]


def _axis_node(graph: ModelGraph, op: str, x: gs.Tensor, y: gs.Tensor, name: str) -> gs.Node:
    """``Unsqueeze``/``Squeeze`` on axis 2, in the form of the model's ONNX opset (axes an input from 13)."""
    if graph.onnx_opset() >= 13:
        axes = make_constant(graph.unique_name(f"{name}_axes"), np.array([2], np.int64))
        return gs.Node(op, name=graph.unique_name(name), inputs=[x, axes], outputs=[y])
    return gs.Node(op, name=graph.unique_name(name), attrs={"axes": [2]}, inputs=[x], outputs=[y])


# The rules for each op, tried in order: the first whose check matches rewrites the layer.
RULES: dict[str, tuple[Rule, ...]] = {
    "MatMul": (MatMulBiasAdd(), MatMul()),
    "Gemm": (Gemm(),),
    "Conv": (Conv(),),
}


def replace_node(graph: ModelGraph, old: gs.Node, op: str, inputs: list, attrs: dict, outputs: list | None = None) -> gs.Node:
    """Put a new onnxsparse node where ``old`` was; it takes over old's outputs unless given others."""
    base = old.name or old.outputs[0].name
    outputs = list(old.outputs) if outputs is None else outputs
    new = gs.Node(op, name=graph.unique_name(f"{base}_sparse"), domain=DOMAIN, attrs=attrs, inputs=[], outputs=[])
    graph.add_node(new, before=old)
    graph.remove_node(old)
    new.inputs.extend(inputs)
    new.outputs.extend(outputs)
    return new


def _is_row(shape: tuple[int, ...], n: int) -> bool:
    """Whether a Gemm C of this shape adds the same row of N to every output row."""
    if len(shape) > 2:
        return False
    if any(d != 1 for d in shape[:-1]):
        return False
    return not shape or shape[-1] in (1, n)
