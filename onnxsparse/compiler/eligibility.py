"""Which Conv/MatMul/Gemm weights are constant and 2:4-sparse: ``CheckSparsity``, a pass that looks only.

For each layer that discovery finds (``layers.find_layers``) it records the weight (name, constant
behind it, shape, dtype, layout), the share of groups of 4 along SPEC's reduction axis that hold
at most 2 non-zeros, and either "eligible" or the reason it is not. The rewrite trusts these
records instead of checking again. ("Verify" is the numeric comparison of ``onnxsparse.verify``.)

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
4. the op variant is supported: MatMul weight of rank 2 and A of rank 1 to 4; Conv 2-D (weight rank 4)
   or 1-D (weight rank 3, checked and compressed as ``[OC, C/group, 1, KW]``);
5. K (for Conv: C/group) is a multiple of 4;
6. every group along K holds at most 2 non-zeros (-0.0 counts as zero).
Steps 1 to 4 (but A's rank) are discovery's; this pass adds A's rank, 5 and 6.
With ``CheckSparsity(pad_channels=True)`` (opt-in, beyond SPEC; ``channel_padding``) a 2-D Conv with
group 1 passes 5 with C rounded up to a multiple of 4 (``record.padded_channels``), and 6 is judged on
the weight with those zero input channels appended (the trailing group of each (oc, kh, kw) holds the
r < 4 real channels and zeros: at most 2 of the real ones may be non-zero).
A weight shared with a node that is not eligible is fine: that node keeps using the dense weight.

Quantized layers (int8 weights behind a DequantizeLinear, and QLinearMatMul, QLinearConv, QGemm,
MatMulInteger, ConvInteger) are checked by ``quant_rules.describe`` instead: their records carry
``quant`` and the int8 rule's answer.

Subgraphs: layers inside If/Loop/Scan bodies (nested ones too) are checked like top-level ones
(their ``scope`` says where they are); a weight from an enclosing graph's initializer is constant, a
body input is not. Local functions are not visited: their layers are reported with ``visited=False``
and a reason saying to inline the functions first; they are never rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import format as fmt
from . import channel_padding
from .graph import ModelGraph, as_2d_weight, constant_array, resolve_constant
from .layers import LayerRecord, find_layers
from .pipeline import Pass, PassResult
from .quant_rules import add_quantized_layers


@dataclass
class CheckResult(PassResult):
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


class CheckSparsity(Pass):
    """Record, per Conv/MatMul/Gemm node, whether its weight can be compressed 2:4 and why not.

    The records are also left on the graph (``ModelGraph.layers``) for the rewrite that follows."""

    modifies = False

    def __init__(self, pad_channels: bool = False) -> None:
        self.pad_channels = pad_channels  # zero-pad a group-1 Conv's C to a multiple of 4 (channel_padding)

    def call(self, graph: ModelGraph) -> CheckResult:
        # Quantized layers (QDQ and QOperator forms) are described and checked by the int8 rules.
        found = find_layers(graph, conv1d=True, subgraphs=True, pad_channels=self.pad_channels, multiple=fmt.GROUP)
        layers = add_quantized_layers(graph, found)
        scopes = graph.scopes()
        nodes = {where: scope.nodes() for where, scope in scopes.items()}
        for record in layers:
            if record.quant is not None:
                record.padded_channels = None  # the int8 rules do not pad
            if record.visited and record.reason is None and record.quant is None:
                _check(scopes[record.scope], nodes[record.scope][record.index], record, self.pad_channels)
        graph.layers = layers
        return CheckResult(graph=graph, modified=False, layers=layers)


def _check(graph: ModelGraph, node, record: LayerRecord, pad_channels: bool = False) -> None:
    """Steps 4 (A's rank), 5 and 6 on a layer discovery found with a layout (5 and 6 on the weight
    zero-padded to ``record.padded_channels`` input channels when discovery set it)."""
    a_shape = record.activation_shape
    if record.op == "MatMul" and a_shape is not None and not 1 <= len(a_shape) <= 4:
        record.layout = None
        record.reason = f"MatMul input A has rank {len(a_shape)}; only ranks 1 to 4 are supported"
        return
    padded = record.padded_channels
    if record.layout == "oihw":
        k, axis = padded or record.shape[1], "C/group"
    else:
        k, axis = fmt.reduction_length(record.shape, record.layout), "K"
    if k % fmt.GROUP:
        record.reason = f"{axis} = {k} is not a multiple of 4"
        if pad_channels and record.layout == "oihw":
            record.reason += f"; {channel_padding.refusal(record.op, record.shape, record.attrs)}"
        return
    source, _ = resolve_constant(graph, node.inputs[1])
    weight = as_2d_weight(constant_array(source.tensor), record.layout)
    if padded:
        weight = channel_padding.pad_weight(weight, padded)
    stats = fmt.weight_group_stats(weight, record.layout)
    record.share = stats.share
    if stats.compliant < stats.groups:
        record.reason = f"{percent(1 - stats.share)} of groups have more than 2 non-zeros"
        if padded:
            record.reason += f" ({channel_padding.describe(record.shape[1], padded)})"
        return
    record.eligible = True
