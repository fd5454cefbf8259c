"""Fold an inference ``BatchNormalization`` that follows a layer into the layer's weight and bias.

``BatchNormalization(y, scale, B, mean, var, epsilon)`` computes, per channel c (axis 1),
``s[c] * (y - mean[c]) + B[c]`` with ``s = scale / sqrt(var + epsilon)``. When ``y`` is a layer's
output whose channel axis is the layer's output feature, the BN is the same layer with

- ``W'`` = W with each output feature's row (Conv: ``W[oc]``; MatMul/Gemm: column n of the ``kn``
  weight, row n of the ``nk`` one) multiplied by ``s``: zeros stay zero, so the 2:4 pattern is the
  original one and the weight is compressed in SPEC's format like any other;
- ``bias'`` = ``s * (bias - mean) + B`` (bias 0 when the layer has none; a Gemm's bias is ``beta * C``).

Computed in float32 from the stored values and rounded once to the weight's dtype. ONNX Runtime
does this fusion for a dense Conv (ConvBNFusion), so the compiled model would otherwise pay a BN
that the dense one does not.

Conditions (``check`` returns one sentence when one fails; None when no BN reads the output):
- ``y`` is read by the BN only and is not a graph output (the Add of a folded MatMul bias, or the
  Conv/Gemm itself, is the producer that counts);
- the BN is in inference form: one output, ``training_mode`` 0, ``spatial`` 1 (opsets before 9);
  scale, B, mean and var are constants of shape ``[N]``, N the layer's output features;
- ``y``'s axis 1 is the output feature: every Conv; a MatMul or Gemm only when its output has rank 2;
- a Gemm's C is constant (folded as the bias), or absent;
- the folded values are finite in the weight's dtype (``var + epsilon > 0``, no overflow).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ..spec import ONNX_DOMAINS
from .graph import ModelGraph, constant_array, resolve_constant
from .layers import LayerRecord


@dataclass
class BatchNormFold:
    """A BN the layer absorbs: its node, and the folded weight and bias row (the weight's dtype)."""

    node: gs.Node
    name: str
    weight: np.ndarray = field(repr=False)
    bias: np.ndarray = field(repr=False)


def _features(record: LayerRecord) -> int:
    if record.layout == "kn":
        return record.shape[1]
    return record.shape[0]  # "nk" and "oihw"


def _feature_axis(record: LayerRecord) -> int:
    """The weight's axis that holds the output features."""
    return 1 if record.layout == "kn" else 0


def check(graph: ModelGraph, record: LayerRecord, node: gs.Node, last: gs.Node, bias: np.ndarray | None,
          weight: np.ndarray) -> BatchNormFold | str | None:
    """The fold of the BN that reads ``last``'s output (``last`` is the layer node, or the bias Add the
    rewrite folds), or why it cannot be folded; None when no BN reads that output.

    ``bias``: the bias the sparse op will add (a row of N, any float dtype), None when it has none;
    ``weight``: the layer's dense weight as stored."""
    y = last.outputs[0]
    readers = list(y.outputs)
    bns = [r for r in readers if r.op == "BatchNormalization" and r.domain in ONNX_DOMAINS]
    if not bns:
        return None
    bn = bns[0]
    name = bn.name or bn.outputs[0].name
    if any(out is y for out in graph.graph.outputs):
        return f"BatchNormalization '{name}': the layer's output is also a graph output"
    if len(readers) != 1:
        return f"BatchNormalization '{name}': the layer's output has {len(readers)} readers, not the BN alone"
    if not bn.inputs or bn.inputs[0] is not y:
        return f"BatchNormalization '{name}' reads the layer's output as a statistic, not as X"
    if len(bn.outputs) != 1 or int(bn.attrs.get("training_mode", 0)) != 0:
        return f"BatchNormalization '{name}' is in training form (running statistics as outputs)"
    if int(bn.attrs.get("spatial", 1)) != 1:
        return f"BatchNormalization '{name}' has spatial=0 (statistics per element, not per channel)"
    if len(bn.inputs) != 5:
        return f"BatchNormalization '{name}' has {len(bn.inputs)} inputs, not 5"
    if record.op in ("MatMul", "Gemm"):
        a_shape = node.inputs[0].shape
        if record.op == "MatMul" and (a_shape is None or len(a_shape) != 2):
            rank = "unknown" if a_shape is None else str(len(a_shape))
            return (f"BatchNormalization '{name}' normalizes axis 1 of the MatMul output, which is the output "
                    f"feature only for a rank-2 output (input A has rank {rank})")
    n = _features(record)
    params = []
    for label, tensor in zip(("scale", "B", "mean", "var"), bn.inputs[1:]):
        source, why_not = resolve_constant(graph, tensor)
        if source is None:
            return f"BatchNormalization '{name}': its {label} is not constant ({why_not})"
        array = np.asarray(constant_array(source.tensor)).astype(np.float32)
        if array.shape != (n,):
            return f"BatchNormalization '{name}': its {label} has shape {list(array.shape)}, not [{n}]"
        params.append(array)
    scale, beta, mean, var = params
    epsilon = np.float32(bn.attrs.get("epsilon", 1e-5))
    with np.errstate(all="ignore"):
        s = scale / np.sqrt(var + epsilon)
        if not np.all(np.isfinite(s)):
            return f"BatchNormalization '{name}': scale / sqrt(var + epsilon) is not finite (var + epsilon <= 0?)"
        b = np.zeros(n, np.float32) if bias is None else np.asarray(bias).astype(np.float32).reshape(-1)
        folded_bias = (s * (b - mean) + beta)
        w32 = np.asarray(weight).astype(np.float32)
        shape = [1] * w32.ndim
        shape[_feature_axis(record)] = n
        folded = np.where(w32 == 0, np.float32(0), w32 * s.reshape(shape))
        dtype = np.asarray(weight).dtype
        new_weight, new_bias = folded.astype(dtype), folded_bias.astype(dtype)
        if not (np.all(np.isfinite(new_weight.astype(np.float32))) and np.all(np.isfinite(new_bias.astype(np.float32)))):
            return f"BatchNormalization '{name}': the folded weight or bias overflows {record.dtype}"
    return BatchNormFold(bn, name, new_weight, new_bias)


def absorb(graph, last: gs.Node, fold: BatchNormFold) -> None:
    """Let ``last`` write the BN's output and drop the BN (cleanup removes it)."""
    out = fold.node.outputs[0]
    graph.remove_node(fold.node)
    last.outputs[0] = out
