"""Rewrite the layers the verifier found eligible into onnxsparse's custom ops.

Rewrites (domain ``onnxsparse``, opset 1; the new node is named ``<original name>_sparse``):

- ``MatMul(A, W)`` -> ``MatMulCompress(A, values, index)``; when the product's only consumer is an
  ``Add`` of a constant row of N (shapes ``[N]``, ``[1]``, ``[]``, ``[1, .., 1, N]`` of rank at most
  the product's) and the product is not a graph output, the row becomes the op's ``bias`` and the
  Add goes: the kernels add it in their epilogue, which saves a pass over the output.
- ``Gemm(A, B, C, alpha, beta, transA, transB)`` -> ``MatMulCompress(A, values, index, bias, alpha, transA)``
  with ``(values, index) = CompressOp(B, layout="nk" if transB else "kn")``. Gemm computes
  ``alpha * A' @ B' + beta * C``; MatMulCompress computes ``alpha * (A' @ W) + bias`` with W = B'
  (the layout absorbs transB), so:
  - C absent -> no bias;
  - C constant and broadcastable as a row of N (shapes ``[N]``, ``[1, N]``, ``[1]``, ``[]``,
    ``[1, 1]``) -> ``bias = broadcast(beta * C, [N])``, computed in fp32 and rounded once to C's
    dtype (C itself when beta = 1 and C is already ``[N]``);
  - any other C -> ``Add(MatMulCompress(...), Mul(C, beta))`` (no Mul when beta = 1).
- ``Conv(X, W, B?, strides, pads, dilations, group, auto_pad)``
  -> ``Conv2dCompress(X, values, index, B?, kernel_shape=[KH, KW], same attributes)``, with
  ``(values, index) = CompressOp(W, layout="oihw")``: W ``[OC, C/group, KH, KW]`` is viewed as
  ``[OC, KH*KW*C/group]`` in (kh, kw, c) order (``W.transpose(0, 2, 3, 1).reshape(OC, -1)``).
- Each rewritten weight gets one ``CompressOp(weight, layout) -> (values, index)`` in front, shared
  by every rewritten node that uses the same constant in the same layout (through Identity chains);
  ``FoldCompress`` then evaluates it offline.

The pass trusts the ``LayerRecord``s of ``VerifySparsity`` on the same graph and does not check
sparsity again. A ``policy`` (``DensePolicy``) may keep an eligible layer dense: it returns the
reason, which the result reports. Dense weights stay wherever a node still uses them.
Subgraphs and functions are not visited (their records are never eligible).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from .. import format as fmt
from ..spec import DOMAIN

from .base import DensePolicy, LayerRecord, Pass, PassResult
from .graph import (
    ONNX_DOMAINS,
    ModelGraph,
    constant_array,
    constant_proto,
    is_omitted,
    make_constant,
    np_dtype,
    resolve_constant,
)

logger = logging.getLogger(__name__)


@dataclass
class LayerDecision:
    """What the rewrite did with one layer."""

    record: LayerRecord
    rewritten: bool
    reason: str | None = None  # why it stays dense: not eligible, or the policy's reason
    replacement: str | None = None  # the name of the node that replaced it
    fused_bias: str | None = None  # the Add node folded into it as its bias

    def to_dict(self) -> dict:
        return {**self.record.to_dict(), "rewritten": self.rewritten, "reason": self.reason,
                "replacement": self.replacement, "fused_bias": self.fused_bias}


@dataclass
class CompressedWeight:
    """One ``CompressOp`` the rewrite inserted and the nodes that share its output."""

    source: str
    layout: str
    node: str
    values: str
    index: str
    users: list[str] = field(default_factory=list)
    tensors: tuple = field(default=(), repr=False, compare=False)  # the (values, index) Variables


@dataclass
class RewriteResult(PassResult):
    decisions: list[LayerDecision] = field(default_factory=list)
    compressed: list[CompressedWeight] = field(default_factory=list)


class RewriteSparseOps(Pass):
    """Replace eligible Conv/MatMul/Gemm nodes by Conv2dCompress/MatMulCompress behind a CompressOp."""

    def __init__(self, layers: list[LayerRecord], policy: DensePolicy | None = None) -> None:
        self.layers = layers
        self.policy = policy

    def call(self, graph: ModelGraph) -> RewriteResult:
        result = RewriteResult(graph=graph, modified=False)
        pairs: dict[tuple[str, str], CompressedWeight] = {}
        in_graph = {id(node) for node in graph.nodes()}
        for record in self.layers:
            if not record.eligible:
                result.decisions.append(LayerDecision(record, rewritten=False, reason=record.reason))
                continue
            if id(record.gs_node) not in in_graph:
                raise ValueError(f"layer record '{record.node}' does not belong to this graph")
            if record.op == "MatMul":
                _note_bias_add(graph, record)
            keep_dense = self.policy(record) if self.policy else None
            if keep_dense:
                logger.info("%s: kept dense: %s", record.node, keep_dense)
                result.decisions.append(LayerDecision(record, rewritten=False, reason=keep_dense))
                continue
            key = (record.source, record.layout)
            if key not in pairs:
                pairs[key] = _insert_compress(graph, record)
                result.compressed.append(pairs[key])
            pair = pairs[key]
            new_node, fused = _REWRITERS[record.op](graph, record, pair)
            pair.users.append(new_node.name)
            logger.info("%s: %s -> %s '%s'%s", record.node, record.op, new_node.op, new_node.name,
                        f" (bias from Add '{fused}')" if fused else "")
            result.decisions.append(LayerDecision(record, rewritten=True, replacement=new_node.name, fused_bias=fused))
            result.modified = True
        if result.modified:
            graph.cleanup()
        return result


def _insert_compress(graph: ModelGraph, record: LayerRecord) -> CompressedWeight:
    data_type = constant_proto(record.gs_source).data_type
    k = fmt.reduction_length(record.shape, record.layout)
    rows = record.shape[1] if record.layout == "kn" else record.shape[0]
    values = gs.Variable(graph.unique_name(f"{record.source}_values"), dtype=data_type, shape=[rows, k // 2])
    index = gs.Variable(graph.unique_name(f"{record.source}_index"), dtype=np.uint8, shape=[rows, (k + 7) // 8])
    node = gs.Node(
        "CompressOp",
        name=graph.unique_name(f"{record.source}_compress"),
        domain=DOMAIN,
        attrs={"layout": record.layout},
        inputs=[record.gs_source],
        outputs=[values, index],
    )
    graph.add_node(node, before=record.gs_node)
    return CompressedWeight(record.source, record.layout, node.name, values.name, index.name, tensors=(values, index))


def _replace(graph: ModelGraph, old: gs.Node, op: str, inputs: list, attrs: dict, outputs: list | None = None) -> gs.Node:
    """Put a new onnxsparse node where ``old`` was; it takes over old's outputs unless given others."""
    base = old.name or old.outputs[0].name
    outputs = list(old.outputs) if outputs is None else outputs
    new = gs.Node(op, name=graph.unique_name(f"{base}_sparse"), domain=DOMAIN, attrs=attrs, inputs=[], outputs=[])
    graph.add_node(new, before=old)
    graph.remove_node(old)
    new.inputs.extend(inputs)
    new.outputs.extend(outputs)
    return new


def _rewrite_matmul(graph: ModelGraph, record: LayerRecord, pair: CompressedWeight) -> tuple[gs.Node, str | None]:
    node = record.gs_node
    inputs = [node.inputs[0], *pair.tensors]
    add, bias = _bias_add(graph, node, record.shape[1], constant_proto(record.gs_source).data_type)
    if add is None:
        return _replace(graph, node, "MatMulCompress", inputs, {}), None
    outputs = list(add.outputs)
    graph.remove_node(add)
    return _replace(graph, node, "MatMulCompress", [*inputs, bias], {}, outputs=outputs), add.name or outputs[0].name


def _note_bias_add(graph: ModelGraph, record: LayerRecord) -> None:
    """Tell the policy which bias Add the rewrite would fold, and what reads its result."""
    add, _ = _bias_add(graph, record.gs_node, record.shape[1], constant_proto(record.gs_source).data_type)
    if add is None:
        return
    result = add.outputs[0]
    record.bias_add = add.name or result.name
    readers = [consumer.op for consumer in result.outputs]
    if any(out is result for out in graph.graph.outputs):
        readers.append("")
    record.bias_consumers = tuple(readers)


def _bias_add(graph: ModelGraph, node: gs.Node, n: int, data_type: int) -> tuple[gs.Node | None, gs.Tensor | None]:
    """The Add that follows a MatMul with a constant row of N, and that row as a [N] bias; or (None, None)."""
    product = node.outputs[0]
    if len(product.outputs) != 1 or any(out is product for out in graph.graph.outputs):
        return None, None
    add = product.outputs[0]
    if add.op != "Add" or add.domain not in ONNX_DOMAINS or len(add.inputs) != 2 or len(add.outputs) != 1:
        return None, None
    if add.inputs[0] is add.inputs[1]:
        return None, None
    row = add.inputs[1] if add.inputs[0] is product else add.inputs[0]
    source, _ = resolve_constant(graph, row)
    if source is None:
        return None, None
    proto = constant_proto(source.tensor)
    dims = tuple(proto.dims)
    # The row must not raise the product's rank by broadcasting (A [K] @ W gives [N]; A [..., K] keeps its rank).
    a_shape = node.inputs[0].shape
    product_rank = 1 if a_shape is None or len(a_shape) <= 1 else len(a_shape)
    if proto.data_type != data_type or len(dims) > product_rank or any(d != 1 for d in dims[:-1]):
        return None, None
    if dims and dims[-1] not in (1, n):
        return None, None
    if dims == (n,):
        return add, row
    values = constant_array(source.tensor)
    base = add.name or add.outputs[0].name
    return add, make_constant(graph.unique_name(f"{base}_bias"), np.broadcast_to(values.reshape(-1), (n,)).copy())


def _rewrite_gemm(graph: ModelGraph, record: LayerRecord, pair: CompressedWeight) -> tuple[gs.Node, str | None]:
    node = record.gs_node
    alpha = float(node.attrs.get("alpha", 1.0))
    beta = float(node.attrs.get("beta", 1.0))
    attrs = {}
    if alpha != 1.0:
        attrs["alpha"] = alpha
    if node.attrs.get("transA", 0):
        attrs["transA"] = 1
    inputs = [node.inputs[0], *pair.tensors]
    c = node.inputs[2] if len(node.inputs) > 2 and not is_omitted(node.inputs[2]) else None
    if c is None:
        return _replace(graph, node, "MatMulCompress", inputs, attrs), None

    n = record.shape[0] if record.layout == "nk" else record.shape[1]
    base = node.name or node.outputs[0].name
    c_source, _ = resolve_constant(graph, c)
    if c_source is not None and _is_row(tuple(constant_proto(c_source.tensor).dims), n):
        c_values = constant_array(c_source.tensor)
        if beta == 1.0 and c_values.shape == (n,):
            bias = c
        else:
            folded = np.broadcast_to(np.float32(beta) * c_values.astype(np.float32).reshape(-1), (n,))
            bias = make_constant(graph.unique_name(f"{base}_bias"), folded.astype(c_values.dtype))
        return _replace(graph, node, "MatMulCompress", [*inputs, bias], attrs), None

    # C is not a constant row: MatMulCompress, then add beta * C as Gemm would.
    y = node.outputs[0]
    product = gs.Variable(graph.unique_name(f"{y.name}_matmul"), dtype=y.dtype, shape=y.shape)
    new_node = _replace(graph, node, "MatMulCompress", inputs, attrs, outputs=[product])
    addend, last = c, new_node
    if beta != 1.0:
        data_type = constant_proto(record.gs_source).data_type
        beta_tensor = make_constant(graph.unique_name(f"{base}_beta"), np.array(beta, dtype=np_dtype(data_type)))
        addend = gs.Variable(graph.unique_name(f"{base}_beta_c"), dtype=y.dtype)
        mul = gs.Node("Mul", name=graph.unique_name(f"{base}_sparse_beta"), inputs=[c, beta_tensor], outputs=[addend])
        last = graph.add_node(mul, after=new_node)
    add = gs.Node("Add", name=graph.unique_name(f"{base}_sparse_bias"), inputs=[product, addend], outputs=[y])
    graph.add_node(add, after=last)
    return new_node, None


def _is_row(shape: tuple[int, ...], n: int) -> bool:
    """Whether a Gemm C of this shape adds the same row of N to every output row."""
    if len(shape) > 2:
        return False
    if any(d != 1 for d in shape[:-1]):
        return False
    return not shape or shape[-1] in (1, n)


def _rewrite_conv(graph: ModelGraph, record: LayerRecord, pair: CompressedWeight) -> tuple[gs.Node, None]:
    node = record.gs_node
    attrs = dict(node.attrs)
    attrs.setdefault("kernel_shape", list(record.shape[2:]))
    inputs = [node.inputs[0], *pair.tensors]
    if len(node.inputs) > 2 and not is_omitted(node.inputs[2]):
        inputs.append(node.inputs[2])
    return _replace(graph, node, "Conv2dCompress", inputs, attrs), None


_REWRITERS = {"MatMul": _rewrite_matmul, "Gemm": _rewrite_gemm, "Conv": _rewrite_conv}
