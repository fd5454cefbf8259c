"""Rewrite the layers ``CheckSparsity`` found eligible into onnxsparse's custom ops, by rules.

For each eligible layer the pass tries the rules for its op (``rules.RULES``) in order; each
rule's check looks at the node once. The first match tells the policy what the rewrite would do
(the bias Add it would fold, and what reads that Add), then, unless the policy keeps the layer
dense, rewrites it. Every layer that is not rewritten, and every MatMul/Gemm whose bias is not
folded, carries the reason in its ``LayerDecision``.

Each rewritten weight gets one ``CompressOp(weight, layout) -> (values, index)`` in front, shared by
every rewritten node that uses the same constant in the same layout (through Identity chains);
``FoldCompress`` then evaluates it offline. The pass trusts the ``LayerRecord``s (``graph.layers``,
or those given) and does not check sparsity again. Dense weights stay wherever a node still uses
them. Layers inside If/Loop/Scan bodies are rewritten in their body (``record.scope``), with the
CompressOp beside them, so its folded ``values``/``index`` are initializers of that body, except
for a weight the main graph defines (an initializer or ``Constant`` node there, the usual case):
it is compressed once, in the main graph, and the bodies read the pair from the outer scope. Local functions are not visited (their records are never eligible).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from .. import format as fmt
from ..spec import COMPRESS_OP, DOMAIN
from . import channel_padding
from . import fold_batchnorm as batchnorm
from .graph import ModelGraph, as_2d_weight, constant_array, is_omitted, make_constant, resolve_constant, walk_subgraphs
from .layers import LayerRecord
from .pipeline import LayerPolicy, Pass, PassResult, as_policy
from .quant_rules import rules_for
from .rules import RULES, Match

logger = logging.getLogger(__name__)


@dataclass
class LayerDecision:
    """What the rewrite did with one layer."""

    record: LayerRecord
    rewritten: bool
    reason: str | None = None  # why it stays dense: not eligible, the policy's reason, or no rule applied
    replacement: str | None = None  # the name of the node that replaced it
    fused_bias: str | None = None  # the Add node folded into it as its bias
    bias_not_folded: str | None = None  # why no bias Add/C was folded into it (when there is one to fold)
    rule: str | None = None  # the rule that rewrote it
    folded_batchnorm: str | None = None  # the BatchNormalization folded into its weight and bias
    batchnorm_not_folded: str | None = None  # why the BatchNormalization reading its output stays

    def to_dict(self) -> dict:
        return {**self.record.to_dict(), "rewritten": self.rewritten, "reason": self.reason,
                "replacement": self.replacement, "fused_bias": self.fused_bias,
                "bias_not_folded": self.bias_not_folded, "folded_batchnorm": self.folded_batchnorm,
                "batchnorm_not_folded": self.batchnorm_not_folded}


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

    def __init__(self, policy: LayerPolicy | None = None, layers: list[LayerRecord] | None = None) -> None:
        self.policy = as_policy(policy)
        self.layers = layers

    def call(self, graph: ModelGraph) -> RewriteResult:
        layers = self.layers if self.layers is not None else graph.layers
        if layers is None:
            raise ValueError("no layer records: run CheckSparsity on this graph first")
        result = RewriteResult(graph=graph, modified=False)
        pairs: dict[tuple, CompressedWeight] = {}
        scopes = graph.scopes()
        # The positions the records were taken at, in each graph, before any rewrite.
        nodes = {where: scope.nodes() for where, scope in scopes.items()}
        main_constants = graph.main_constant_names()
        for record in layers:
            if not record.eligible:
                result.decisions.append(LayerDecision(record, rewritten=False, reason=record.reason))
                continue
            scope = scopes.get(record.scope)
            found = nodes.get(record.scope, [])
            node = found[record.index] if scope is not None and record.index is not None and record.index < len(found) else None
            if node is None or node.op != record.op or (node.name and node.name != record.node):
                raise ValueError(f"layer record '{record.node}' does not belong to this graph")
            match, refused = _match(scope, node, record)
            if match is None:
                reason = "no rewrite rule applies: " + "; ".join(refused)
                result.decisions.append(LayerDecision(record, rewritten=False, reason=reason))
                continue
            if match.add is not None:
                _note_bias_add(scope, record, match)
            keep_dense = self.policy(record)
            if keep_dense:
                logger.info("%s: kept dense: %s", record.node, keep_dense)
                result.decisions.append(LayerDecision(record, rewritten=False, reason=keep_dense))
                continue
            bn_fold, bn_reason = _fold_batchnorm(scope, record, match) if not record.quant else (None, None)
            # One CompressOp per weight and layout, in the graph that defines the weight: a main-graph
            # constant is compressed once in the main graph, and the bodies read the pair from there.
            # A weight with a BN folded in is this layer's own, beside it.
            owner = "" if record.source in main_constants and bn_fold is None else record.scope
            key = (record.source if bn_fold is None else match.weight.name, record.layout, len(record.shape), owner,
                   match.padded_channels)
            if key not in pairs:
                before = match.node if owner == record.scope else _holder(graph, record.scope)
                pairs[key] = _insert_compress(scopes[owner], record, match, before)
                result.compressed.append(pairs[key])
            pair = pairs[key]
            new_node = match.rule.rewrite(scope, match, pair.tensors)
            pair.users.append(new_node.name)
            logger.info("%s: %s -> %s '%s' (%s)%s%s", record.node, record.op, new_node.op, new_node.name, match.rule.name,
                        f" (bias from Add '{match.folded_add}')" if match.folded_add else "",
                        f" (bias not folded: {match.not_folded})" if match.not_folded else "")
            result.decisions.append(LayerDecision(record, rewritten=True, replacement=new_node.name,
                                                  fused_bias=match.folded_add, bias_not_folded=match.not_folded,
                                                  rule=match.rule.name, folded_batchnorm=bn_fold,
                                                  batchnorm_not_folded=bn_reason))
            result.modified = True
        if result.modified:
            graph.cleanup()
        return result


def _match(graph: ModelGraph, node: gs.Node, record: LayerRecord) -> tuple[Match | None, list[str]]:
    """The first rule for the layer's op that matches (with the reasons of those before it), or
    None and every rule's reason."""
    refused: list[tuple[str, str]] = []
    for rule in (rules_for(record) if record.quant else RULES.get(record.op, ())):
        found = rule.check(graph, node, record)
        if isinstance(found, Match):
            if refused and found.not_folded is None:
                found.not_folded = refused[-1][1]
            return found, []
        refused.append((rule.name, found))
    return None, [f"{name}: {reason}" for name, reason in refused] or [f"no rule for {record.op}"]


def _fold_batchnorm(graph, record: LayerRecord, match: Match) -> tuple[str | None, str | None]:
    """Fold the BatchNormalization that reads the layer's output (after its folded bias Add) into
    the match: a new dense weight (compressed like any other), the bias, and the BN's output as the
    op's. Returns (the BN's name, None) when folded, (None, why not) when a BN stays, (None, None)
    when no BN reads the output."""
    node = match.node
    last = match.add if match.add is not None else node
    bias = None
    if match.rule.op == "Gemm" and match.not_folded is not None:
        readers = last.outputs[0].outputs
        if any(r.op == "BatchNormalization" for r in readers):
            return None, "Gemm's C is added after the sparse op, so a BatchNormalization cannot be folded before it"
        return None, None
    if match.bias is not None or match.bias_row is not None:
        bias = match.bias_row
        if bias is None:
            source, _ = resolve_constant(graph, match.bias)
            bias = constant_array(source.tensor)
    elif record.op == "Conv" and len(node.inputs) > 2 and not is_omitted(node.inputs[2]):
        source, why_not = resolve_constant(graph, node.inputs[2])
        if source is None:
            readers = last.outputs[0].outputs
            if any(r.op == "BatchNormalization" for r in readers):
                return None, f"the Conv's bias is not constant ({why_not})"
            return None, None
        bias = constant_array(source.tensor)
    if not any(reader.op == "BatchNormalization" for reader in last.outputs[0].outputs):
        return None, None  # no BN to fold: the weight is not read (it may be in a file, issue 16)
    found = batchnorm.check(graph, record, node, last, bias, constant_array(match.weight))
    if not isinstance(found, batchnorm.BatchNormFold):
        return None, found
    match.weight = make_constant(graph.unique_name(f"{record.source}_bn"), found.weight)
    new_bias = make_constant(graph.unique_name(f"{found.name}_bias"), found.bias)
    if record.op == "Conv":
        if len(node.inputs) > 2:
            node.inputs[2] = new_bias
        else:
            node.inputs.append(new_bias)
    else:  # the rules' rewrites build the bias from the row
        match.bias, match.bias_row, match.not_folded = None, found.bias, None
    batchnorm.absorb(graph, last, found)
    logger.info("%s: BatchNormalization '%s' folded into its weight and bias", record.node, found.name)
    return found.name, None


def _note_bias_add(graph: ModelGraph, record: LayerRecord, match: Match) -> None:
    """Tell the policy which bias Add the rewrite would fold, and what reads its result."""
    result = match.add.outputs[0]
    record.bias_add = match.folded_add
    readers = [consumer.op for consumer in result.outputs]
    if any(out is result for out in graph.graph.outputs):
        readers.append("")
    record.bias_consumers = tuple(readers)


def _holder(graph: ModelGraph, where: str) -> gs.Node | None:
    """The main-graph node (If, Loop, Scan) whose body, or a body nested in it, is ``where``."""
    return next((node for node in graph.nodes() if any(inner == where for inner, _ in walk_subgraphs([node]))), None)


def _insert_compress(graph, record: LayerRecord, match: Match, before: gs.Node | None) -> CompressedWeight:
    """A CompressOp for the layer's weight in ``graph``, before ``before`` (else first)."""
    shape = record.shape
    if match.padded_channels:  # C zero-padded to C4 (channel_padding): compress the padded weight
        shape = (shape[0], match.padded_channels, *shape[2:])
    k = fmt.reduction_length(shape, record.layout)
    rows = shape[1] if record.layout == "kn" else shape[0]
    values = gs.Variable(graph.unique_name(f"{record.source}_values"), dtype=match.data_type, shape=[rows, k // 2])
    index = gs.Variable(graph.unique_name(f"{record.source}_index"), dtype=np.uint8, shape=[rows, (k + 7) // 8])
    weight = match.weight
    if len(record.shape) == 3:  # a 1-D Conv: compress the weight as [OC, C/group, 1, KW]
        weight = make_constant(graph.unique_name(f"{record.source}_h1"),
                               as_2d_weight(constant_array(match.weight), record.layout))
    elif match.padded_channels:
        weight = make_constant(graph.unique_name(f"{record.source}_c{match.padded_channels}"),
                               channel_padding.pad_weight(constant_array(match.weight), match.padded_channels))
    node = gs.Node(
        COMPRESS_OP,
        name=graph.unique_name(f"{record.source}_compress"),
        domain=DOMAIN,
        attrs={"layout": record.layout},
        inputs=[weight],
        outputs=[values, index],
    )
    graph.add_node(node, before=before if before is not None else next(iter(graph.graph.nodes), None))
    return CompressedWeight(record.source, record.layout, node.name, values.name, index.name, tensors=(values, index))
