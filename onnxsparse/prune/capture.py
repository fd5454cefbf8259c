"""Layer inputs from ONNX Runtime, reduced on the fly to each layer's Hessian H = X^T X.

``expose(model, tensors, available)`` cuts the graph down to the nodes that compute ``tensors``
from the graph inputs or from given tensors, so that ONNX Runtime runs only what a layer needs.
``Frontier`` keeps the tensors crossing a cut for every calibration batch, so that sequential
pruning runs each node about twice in all instead of once per block. ``capture`` runs the
calibration batches through it and accumulates, per layer, H in float64 (``[groups, K, K]``; each
chunk's product in float32, summed in float64):
memory holds one batch's activations plus the Hessians (and the frontier: the tensors crossing
one cut for all batches, as SparseGPT keeps a block's inputs; dropped above ``cache_limit``).

Rows of X are the layer's input vectors in SPEC's K order:
- MatMul ``X @ W``: X reshaped to ``[-1, K]``; Gemm: A (``A^T`` with transA=1).
- Conv: im2col of the input, one row per output pixel, the K = KH*KW*C/group elements in
  (kh, kw, c) order, one block of rows per group (``unfold_conv``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import onnx

from ..compiler.graph import ModelGraph, resolve_constant, subgraph_reads
from ..errors import OnnxSparseError
from .files import dense_session
from .layers import ConvGeometry, Layer, Use


CHUNK_ROWS = 8192  # input vectors per X^T X product


@dataclass
class Statistics:
    """Per-layer accumulated input statistics."""

    hessian: np.ndarray  # [groups, K, K] float64, sum over rows of x x^T
    rows: int = 0

    def mean(self) -> np.ndarray:
        return self.hessian / max(self.rows, 1)


def expose(model: onnx.ModelProto, tensors: list[str], available: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A copy of ``model`` computing ``tensors`` with only the nodes needed.

    ``available``: tensors whose values are given (a frontier); they become the cut model's
    inputs and nothing upstream of them runs. Otherwise the graph inputs are its inputs.
    """
    graph = model.graph
    available = available or {}
    producer = {out: index for index, node in enumerate(graph.node) for out in node.output}
    keep, seen, stack = set(), set(), [t for t in tensors if t not in available]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        index = producer.get(name)
        if name in available or index is None or index in keep:
            continue
        keep.add(index)
        node = graph.node[index]
        stack.extend(i for i in list(node.input) + subgraph_reads(node) if i)
    cut = onnx.ModelProto()
    cut.CopyFrom(model)  # keeps opsets, functions, metadata
    cut.graph.ClearField("node")
    cut.graph.node.extend(graph.node[i] for i in sorted(keep))
    cut.graph.ClearField("initializer")
    cut.graph.initializer.extend(t for t in graph.initializer if t.name in seen and t.name not in available)
    cut.graph.ClearField("input")
    cut.graph.input.extend(i for i in graph.input if i.name in seen and i.name not in available)
    for name in sorted(seen & set(available)):
        elem = onnx.helper.np_dtype_to_tensor_dtype(available[name].dtype)
        cut.graph.input.append(onnx.helper.make_tensor_value_info(name, elem, None))
    cut.graph.ClearField("output")
    given = {i.name for i in cut.graph.input} | set(available)
    cut.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors if t not in given)
    return cut


def run_tensors(model: onnx.ModelProto, tensors: list[str], batches: Iterable[dict]) -> Iterator[dict[str, np.ndarray]]:
    """For each batch (graph inputs, or a frontier's values), the values of ``tensors``."""
    runner = None
    for batch in batches:
        missing = [t for t in tensors if t not in batch]
        if not missing:  # nothing to compute
            yield {t: batch[t] for t in tensors}
            continue
        if runner is None:
            runner = dense_session(expose(model, tensors, available=batch))
            fed = [i.name for i in runner.get_inputs()]
            outputs = [o.name for o in runner.get_outputs()]
        try:
            values = runner.run(outputs, {name: batch[name] for name in fed})
        except Exception as exc:
            raise OnnxSparseError(f"ONNX Runtime failed on a calibration batch: {str(exc).splitlines()[0]}") from None
        found = dict(zip(outputs, values))
        yield {t: found[t] if t in found else batch[t] for t in tensors}


class Frontier:
    """Every calibration batch's values at a cut of the graph, so that later layers run only what follows.

    Sequential pruning captures block after block; recomputing each block's inputs from the graph
    inputs would run the model's prefix once per block. The frontier instead holds the tensors that
    cross the cut (produced before node ``position``, read at or after it; constants excepted, they
    may be weights still to prune) for all batches, and ``advance`` moves it past finished layers.
    Over ``cache_limit`` bytes it drops the cache and goes back to running from the graph inputs.
    """

    def __init__(self, model: onnx.ModelProto, calibration: Iterable[dict], cache_limit: int = 2 << 30):
        self.calibration = calibration
        self.cache_limit = cache_limit
        self.position = 0
        self.cache: list[dict[str, np.ndarray]] | None = None
        graph = model.graph
        self._constant = _constant_tensors(model)
        self._last_read: dict[str, int] = {}
        for index, node in enumerate(graph.node):
            for name in list(node.input) + subgraph_reads(node):
                self._last_read[name] = index

    def batches(self) -> Iterable[dict]:
        return self.cache if self.cache is not None else self.calibration

    def live(self, model: onnx.ModelProto, position: int) -> list[str]:
        """The non-constant tensors produced before node ``position`` (or fed) and read at or after it."""
        produced = [i.name for i in model.graph.input] + [o for node in model.graph.node[:position] for o in node.output]
        initializers = {t.name for t in model.graph.initializer}
        return [t for t in produced if self._last_read.get(t, -1) >= position
                and t not in self._constant and t not in initializers]

    def advance(self, model: onnx.ModelProto, position: int) -> None:
        """Move the cut to node ``position`` (every node before it final) by running the segment."""
        if position <= self.position or self.cache_limit <= 0:
            return
        tensors = self.live(model, position)
        cache, size = [], 0
        for values in run_tensors(model, tensors, self.batches()):
            size += sum(v.nbytes for v in values.values())
            if size > self.cache_limit:
                self.cache, self.position = None, 0
                return
            cache.append(values)
        self.cache, self.position = cache, position


def _constant_tensors(model: onnx.ModelProto) -> set[str]:
    """The tensors whose value is a constant (initializers that are no graph input, Constant
    outputs, Identity chains on either), by the compiler's resolver."""
    mg = ModelGraph(model)
    return {name for name, tensor in mg.graph.tensors().items() if name and resolve_constant(mg, tensor)[0] is not None}


def _pads(geometry: ConvGeometry, height: int, width: int) -> tuple[int, int, int, int]:
    if geometry.auto_pad in ("NOTSET", ""):
        return geometry.pads
    if geometry.auto_pad == "VALID":
        return (0, 0, 0, 0)
    pads = []
    for size, k, s, d in zip((height, width), geometry.kernel, geometry.strides, geometry.dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        pads.append((small, large) if geometry.auto_pad == "SAME_UPPER" else (large, small))
    return (pads[0][0], pads[1][0], pads[0][1], pads[1][1])


def unfold_conv(x: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """im2col of one image ``[C, H, W]``: ``[groups, OH*OW, KH*KW*C/group]`` in (kh, kw, c) order."""
    channels, height, width = x.shape
    top, left, bottom, right = _pads(geometry, height, width)
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel, geometry.strides, geometry.dilations
    out_h = (height + top + bottom - (kh - 1) * dh - 1) // sh + 1
    out_w = (width + left + right - (kw - 1) * dw - 1) // sw + 1
    patches = np.empty((kh, kw, channels, out_h, out_w), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            patches[i, j] = padded[:, i * dh : i * dh + (out_h - 1) * sh + 1 : sh, j * dw : j * dw + (out_w - 1) * sw + 1 : sw]
    groups = geometry.group
    patches = patches.reshape(kh, kw, groups, channels // groups, out_h, out_w)
    return patches.transpose(2, 4, 5, 0, 1, 3).reshape(groups, out_h * out_w, kh * kw * (channels // groups))


def input_rows(activation: np.ndarray, use: Use) -> Iterator[np.ndarray]:
    """The layer's input vectors ``[groups, rows, K]`` (float32), at most ``CHUNK_ROWS`` rows at a time."""
    x = np.asarray(activation, dtype=np.float32)
    if use.conv is not None:
        if x.ndim != 4:
            raise OnnxSparseError(f"{use.node}: Conv input has rank {x.ndim}, expected 4 (N, C, H, W)")
        per_image = max(1, CHUNK_ROWS // max(1, x.shape[2] * x.shape[3]))
        for start in range(0, x.shape[0], per_image):
            yield np.concatenate([unfold_conv(image, use.conv) for image in x[start : start + per_image]], axis=1)
        return
    if use.trans_a:
        x = x.T
    x = x.reshape(-1, x.shape[-1])
    for start in range(0, x.shape[0], CHUNK_ROWS):
        yield x[None, start : start + CHUNK_ROWS]


def new_statistics(layer: Layer) -> Statistics:
    # For Conv, K = KH*KW*C/group is already per group.
    return Statistics(hessian=np.zeros((layer.groups, layer.k, layer.k)))


def accumulate(stats: Statistics, activation: np.ndarray, use: Use) -> None:
    for chunk in input_rows(activation, use):
        if chunk.shape[-1] != stats.hessian.shape[-1]:
            raise OnnxSparseError(f"{use.node}: input has {chunk.shape[-1]} features, the weight expects K={stats.hessian.shape[-1]}")
        # A chunk's X^T X in float32 (BLAS speed), the sum over chunks and all later maths in float64.
        stats.hessian += np.matmul(chunk.transpose(0, 2, 1), chunk)
        stats.rows += chunk.shape[1]


def capture(model: onnx.ModelProto, layers: list[Layer], batches: Iterable[dict]) -> dict[str, Statistics]:
    """Run the batches (graph inputs or a frontier's values) through ``model``; H for each layer (by weight)."""
    tensors = sorted({use.activation for layer in layers for use in layer.uses})
    stats = {layer.weight: new_statistics(layer) for layer in layers}
    for values in run_tensors(model, tensors, batches):
        for layer in layers:
            for use in layer.uses:
                accumulate(stats[layer.weight], values[use.activation], use)
    return stats
