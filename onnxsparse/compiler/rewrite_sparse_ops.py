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
them. Subgraphs and functions are not visited (their records are never eligible).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from .. import format as fmt
from ..spec import COMPRESS_OP, DOMAIN
from .graph import ModelGraph, as_2d_weight, constant_array, make_constant
from .layers import LayerRecord
from .pipeline import LayerPolicy, Pass, PassResult, as_policy
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

    def to_dict(self) -> dict:
        return {**self.record.to_dict(), "rewritten": self.rewritten, "reason": self.reason,
                "replacement": self.replacement, "fused_bias": self.fused_bias,
                "bias_not_folded": self.bias_not_folded}


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
        pairs: dict[tuple[str, str], CompressedWeight] = {}
        nodes = graph.nodes()  # the positions the records were taken at, before any rewrite
        for record in layers:
            if not record.eligible:
                result.decisions.append(LayerDecision(record, rewritten=False, reason=record.reason))
                continue
            node = nodes[record.index] if record.index is not None and record.index < len(nodes) else None
            if node is None or node.op != record.op or (node.name and node.name != record.node):
                raise ValueError(f"layer record '{record.node}' does not belong to this graph")
            match, refused = _match(graph, node, record)
            if match is None:
                reason = "no rewrite rule applies: " + "; ".join(refused)
                result.decisions.append(LayerDecision(record, rewritten=False, reason=reason))
                continue
            if match.add is not None:
                _note_bias_add(graph, record, match)
            keep_dense = self.policy(record)
            if keep_dense:
                logger.info("%s: kept dense: %s", record.node, keep_dense)
                result.decisions.append(LayerDecision(record, rewritten=False, reason=keep_dense))
                continue
            key = (record.source, record.layout, len(record.shape))
            if key not in pairs:
                pairs[key] = _insert_compress(graph, record, match)
                result.compressed.append(pairs[key])
            pair = pairs[key]
            new_node = match.rule.rewrite(graph, match, pair.tensors)
            pair.users.append(new_node.name)
            logger.info("%s: %s -> %s '%s' (%s)%s%s", record.node, record.op, new_node.op, new_node.name, match.rule.name,
                        f" (bias from Add '{match.folded_add}')" if match.folded_add else "",
                        f" (bias not folded: {match.not_folded})" if match.not_folded else "")
            result.decisions.append(LayerDecision(record, rewritten=True, replacement=new_node.name,
                                                  fused_bias=match.folded_add, bias_not_folded=match.not_folded,
                                                  rule=match.rule.name))
            result.modified = True
        if result.modified:
            graph.cleanup()
        return result


def _match(graph: ModelGraph, node: gs.Node, record: LayerRecord) -> tuple[Match | None, list[str]]:
    """The first rule for the layer's op that matches (with the reasons of those before it), or
    None and every rule's reason."""
    refused: list[tuple[str, str]] = []
    for rule in RULES.get(record.op, ()):
        found = rule.check(graph, node, record)
        if isinstance(found, Match):
            if refused and found.not_folded is None:
                found.not_folded = refused[-1][1]
            return found, []
        refused.append((rule.name, found))
    return None, [f"{name}: {reason}" for name, reason in refused] or [f"no rule for {record.op}"]


def _note_bias_add(graph: ModelGraph, record: LayerRecord, match: Match) -> None:
    """Tell the policy which bias Add the rewrite would fold, and what reads its result."""
    result = match.add.outputs[0]
    record.bias_add = match.folded_add
    readers = [consumer.op for consumer in result.outputs]
    if any(out is result for out in graph.graph.outputs):
        readers.append("")
    record.bias_consumers = tuple(readers)


def _insert_compress(graph: ModelGraph, record: LayerRecord, match: Match) -> CompressedWeight:
    k = fmt.reduction_length(record.shape, record.layout)
    rows = record.shape[1] if record.layout == "kn" else record.shape[0]
    values = gs.Variable(graph.unique_name(f"{record.source}_values"), dtype=match.data_type, shape=[rows, k // 2])
    index = gs.Variable(graph.unique_name(f"{record.source}_index"), dtype=np.uint8, shape=[rows, (k + 7) // 8])
    weight = match.weight
    if len(record.shape) == 3:  # a 1-D Conv: compress the weight as [OC, C/group, 1, KW]
        weight = make_constant(graph.unique_name(f"{record.source}_h1"),
                               as_2d_weight(constant_array(match.weight), record.layout))
    node = gs.Node(
        COMPRESS_OP,
        name=graph.unique_name(f"{record.source}_compress"),
        domain=DOMAIN,
        attrs={"layout": record.layout},
        inputs=[weight],
        outputs=[values, index],
    )
    graph.add_node(node, before=match.node)
    return CompressedWeight(record.source, record.layout, node.name, values.name, index.name, tensors=(values, index))
