"""Run chains of sparse convolutions in NHWC, with Transposes only where a chain meets the rest.

On CUDA a sparse Conv is one GEMM over every output pixel when its activations are NHWC ([N*H*W, C]
rows), with no im2col at all for a 1x1 stride-1 conv. ONNX's Conv is NCHW, so each
``Conv2dCompress`` would transpose its input and output; a chain of them (a ResNet stage: convs,
their Relus, the residual Adds) needs the Transposes only at its ends. Opt-in
(``compile --conv-layout nhwc``): the chain is for CUDA, where the NHWC form's GEMM is the fast one;
the CPU kernels take the layout too but transpose around their NCHW computation.

Rewrite, in every scope:
- S, the nodes that run in NHWC: every float ``Conv2dCompress`` of group 1 (its attribute ``layout``
  set to ``"NHWC"``), then, to a fixed point, every elementwise node reading an output of S: unary
  (``UNARY``) or binary (``BINARY``, NumPy broadcasting), whose other inputs are outputs of S,
  constants (permuted: a ``[1, C, 1, 1]`` per-channel constant becomes ``[1, 1, 1, C]``; a scalar stays)
  or other tensors of rank 4 (transposed in).
- Every output of S gets a new name (``<name>.nhwc``: the source model's names keep their NCHW
  shapes, which ``AnnotateShapes`` writes). Where a node outside S or a graph output reads it, a
  ``Transpose(perm=[0, 3, 1, 2])`` gives back the tensor under its old name.
- Every other tensor an S node reads (the chain's input) gets one ``Transpose(perm=[0, 2, 3, 1])``,
  shared by its S readers.
The values are the NCHW model's: only layouts change (the convolutions are the same sums).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..spec import CONV2D_COMPRESS, DOMAIN, ONNX_DOMAINS
from .annotate_shapes import inferred_shapes
from .graph import ModelGraph, constant_array, is_omitted, make_constant, producer, resolve_constant
from .pipeline import Pass, PassResult

UNARY = frozenset({"Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu", "Selu",
                   "Softplus", "Abs", "Neg", "Exp", "Erf", "Sqrt", "Reciprocal", "Identity", "Cast"})
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "PRelu"})
TO_NHWC = [0, 2, 3, 1]
TO_NCHW = [0, 3, 1, 2]


@dataclass
class NhwcResult(PassResult):
    convs: list[str] = field(default_factory=list)  # the Conv2dCompress nodes now NHWC
    elementwise: list[str] = field(default_factory=list)  # the other nodes in chains
    transposes: int = 0  # Transposes added (into and out of the chains)


def _is_conv(node: gs.Node) -> bool:
    return (node.op == CONV2D_COMPRESS and node.domain == DOMAIN and int(node.attrs.get("group", 1)) == 1
            and node.attrs.get("layout", "NCHW") == "NCHW" and len(node.outputs) == 1)


def _rank(tensor: gs.Tensor, shapes: dict) -> int | None:
    """The tensor's rank: its own shape, else ONNX's inference on the source model, else None."""
    shape = getattr(tensor, "shape", None)
    if shape is None and tensor.name in shapes:
        shape = shapes[tensor.name][1]
    return None if shape is None else len(shape)


class NhwcChains(Pass):
    """Turn chains of ``Conv2dCompress`` (and the elementwise nodes between them) into NHWC."""

    def call(self, graph: ModelGraph) -> NhwcResult:
        result = NhwcResult(graph=graph, modified=False)
        shapes: dict | None = None
        for scope in graph.scopes().values():
            if not any(_is_conv(n) for n in scope.nodes()):
                continue
            if shapes is None:  # ranks of the tensors an elementwise node may take in (inferred once)
                shapes = inferred_shapes(graph.source)
            self._chain(scope, result, shapes)
        if result.modified:
            graph.cleanup()
        return result

    def _chain(self, graph, result: NhwcResult, shapes: dict) -> None:
        nodes = graph.nodes()
        members: dict[int, gs.Node] = {id(n): n for n in nodes if _is_conv(n)}
        if not members:
            return
        constants: dict[int, np.ndarray] = {}  # an elementwise member's constant inputs, by tensor id

        def nhwc(tensor: gs.Tensor) -> bool:
            node = producer(tensor)
            return node is not None and id(node) in members

        changed = True
        while changed:
            changed = False
            for node in nodes:
                if id(node) in members or node.domain not in ONNX_DOMAINS or len(node.outputs) != 1:
                    continue
                if node.op not in UNARY and node.op not in BINARY:
                    continue
                inputs = [t for t in node.inputs if not is_omitted(t)]
                data = [t for t in inputs if nhwc(t)]
                if not data or (node.op in UNARY and node.op != "Clip" and len(inputs) != 1):
                    continue
                fits = True
                for t in inputs:
                    if nhwc(t):
                        continue
                    source, _ = resolve_constant(graph, t) if not graph.is_graph_input(t) else (None, None)
                    if source is not None:
                        array = np.asarray(constant_array(source.tensor))
                        if node.op == "Clip" or array.size == 1 or array.ndim <= 4:
                            constants[id(t)] = array  # scalars stay as they are, the rest is permuted
                        else:
                            fits = False
                    elif node.op in BINARY and _rank(t, shapes) == 4:
                        continue  # transposed in
                    else:
                        fits = False
                if fits:
                    members[id(node)] = node
                    changed = True
        self._rewrite(graph, nodes, members, constants, result)

    @staticmethod
    def _rewrite(graph, nodes: list[gs.Node], members: dict[int, gs.Node], constants: dict[int, np.ndarray],
                 result: NhwcResult) -> None:
        outputs = {id(t) for t in graph.graph.outputs}
        inside = set(members)
        # Outputs of S: a new NHWC tensor; the old name back through a Transpose where read outside.
        renamed: set[int] = set()  # ids of the new NHWC tensors
        for node in nodes:
            if id(node) not in inside:
                continue
            old = node.outputs[0]
            new = gs.Variable(graph.unique_name(f"{old.name}.nhwc"), dtype=old.dtype)
            readers = list(old.outputs)
            node.outputs[0] = new
            renamed.add(id(new))
            for reader in readers:
                if id(reader) in inside:
                    for i, t in enumerate(reader.inputs):
                        if t is old:
                            reader.inputs[i] = new
            if old.outputs or id(old) in outputs:  # read outside S (its S readers read `new` now)
                back = gs.Node("Transpose", name=graph.unique_name(f"{old.name}.to_nchw"), attrs={"perm": TO_NCHW},
                               inputs=[new], outputs=[old])
                graph.add_node(back, after=node)
                result.transposes += 1
        # Inputs of S from outside: one Transpose each; constants permuted.
        entered: dict[int, gs.Variable] = {}
        for node in nodes:
            if id(node) not in inside:
                continue
            if node.op == CONV2D_COMPRESS:
                node.attrs["layout"] = "NHWC"
                result.convs.append(node.name)
                sources = [0]  # X; values, index and the bias are not activations
            else:
                result.elementwise.append(node.name)
                sources = range(len(node.inputs))
            for i in sources:
                t = node.inputs[i]
                if is_omitted(t) or id(t) in renamed:
                    continue
                if id(t) in constants:
                    array = constants[id(t)]
                    if node.op == "Clip" or array.size == 1:
                        continue
                    padded = array.reshape((1,) * (4 - array.ndim) + array.shape)
                    node.inputs[i] = make_constant(graph.unique_name(f"{t.name}.nhwc"),
                                                   np.ascontiguousarray(padded.transpose(TO_NHWC)))
                    continue
                if id(t) not in entered:
                    into = gs.Variable(graph.unique_name(f"{t.name}.nhwc"), dtype=t.dtype)
                    transpose = gs.Node("Transpose", name=graph.unique_name(f"{t.name}.to_nhwc"),
                                        attrs={"perm": TO_NHWC}, inputs=[t], outputs=[into])
                    graph.add_node(transpose, before=node)
                    entered[id(t)] = into
                    result.transposes += 1
                node.inputs[i] = entered[id(t)]
        result.modified = bool(result.convs)


__all__ = ["NhwcChains", "NhwcResult", "UNARY", "BINARY"]
