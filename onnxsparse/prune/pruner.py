"""Prune a dense ONNX model's Conv/MatMul/Gemm weights to N:M along SPEC's axis.

``prune_model(model, options, calibration)`` returns the pruned model and a ``PruneReport``.

- magnitude: needs no data; the calibration batches only measure the errors it causes.
- wanda, sparsegpt: sequential, as SparseGPT does: layers are visited in graph order in blocks of
  layers that do not feed one another (``sequential_blocks``); each block's input Hessians are
  captured from the model with every earlier block already pruned, so that a layer corrects the
  error of the layers before it. A ``Frontier`` of cached tensors keeps this to about two passes
  over the graph. ``sequential=False`` captures everything once, from the dense model.
- ``max_error``: first choose the layers (``sensitivity.select_layers``), then prune those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import onnx

from ..errors import OnnxSparseError
from .calibration import Calibration
from .capture import Frontier, capture
from .evaluate import OutputError, ReferenceOutputs
from .layers import Layer, Skipped, node_names, read_weight, scan_layers, weight_params, write_weight
from .methods import METHODS, LayerResult, prune_layer
from .sensitivity import select_layers

Progress = Callable[[str], None]


@dataclass
class PruneOptions:
    method: str = "magnitude"
    n: int = 2
    m: int = 4
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    prune_head: bool = False
    block_size: int = 128
    damp: float = 0.01
    sequential: bool = True
    max_error: float | None = None

    def validate(self) -> None:
        if self.method not in METHODS:
            raise OnnxSparseError(f"unknown method {self.method!r} (choose from {', '.join(METHODS)})")
        if not (0 < self.n < self.m):
            raise OnnxSparseError(f"N:M must have 0 < N < M, got {self.n}:{self.m}")
        if self.block_size < self.m:
            raise OnnxSparseError(f"--block-size {self.block_size} must be at least M={self.m}")
        if self.damp < 0:
            raise OnnxSparseError("--damp must be >= 0")
        if self.max_error is not None and self.max_error < 0:
            raise OnnxSparseError("--max-error must be >= 0")


@dataclass
class PruneReport:
    method: str
    n: int
    m: int
    calibration: str
    layers: list[LayerResult]
    skipped: list[Skipped]
    heads: list[str]
    total_params: int
    output_error: OutputError | None = None
    selection: list[dict] = field(default_factory=list)  # --max-error trace

    @property
    def pruned_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    def to_json(self) -> dict:
        return {
            "method": self.method, "n": self.n, "m": self.m, "calibration": self.calibration,
            "layers": [layer.to_json() for layer in self.layers],
            "skipped": [{"name": s.node, "op_type": s.op_type, "weight": s.weight, "reason": s.reason} for s in self.skipped],
            "heads": self.heads,
            "pruned_params": self.pruned_params, "total_params": self.total_params,
            "output_error": self.output_error.to_json() if self.output_error else None,
            "selection": self.selection,
        }


def sequential_blocks(model: onnx.ModelProto, layers: list[Layer]) -> list[list[Layer]]:
    """Consecutive runs of layers (graph order) none of which feeds another in the same run."""
    node_layer = {use.node: index for index, layer in enumerate(layers) for use in layer.uses}
    upstream: dict[str, int] = {}  # tensor -> bitset of layers it depends on
    for node, name in zip(model.graph.node, node_names(model.graph)):
        bits = 0
        for tensor in node.input:
            bits |= upstream.get(tensor, 0)
        if name in node_layer:
            bits |= 1 << node_layer[name]
        for tensor in node.output:
            upstream[tensor] = bits
    blocks: list[list[Layer]] = []
    current_bits = 0
    for index, layer in enumerate(layers):
        depends = 0
        for use in layer.uses:
            depends |= upstream.get(use.activation, 0)
        depends &= ~(1 << index)
        if not blocks or depends & current_bits:
            blocks.append([])
            current_bits = 0
        blocks[-1].append(layer)
        current_bits |= 1 << index
    return blocks


def no_layers_error(skipped: list[Skipped]) -> OnnxSparseError:
    if not skipped:
        return OnnxSparseError("no eligible layer to prune: the model has no Conv, MatMul or Gemm")
    reasons = sorted({s.reason for s in skipped})
    shown = "; ".join(reasons[:3]) + ("; ..." if len(reasons) > 3 else "")
    return OnnxSparseError(f"no eligible layer to prune ({len(skipped)} Conv/MatMul/Gemm skipped: {shown})")


def prune_model(model: onnx.ModelProto, options: PruneOptions, calibration: Calibration,
                progress: Progress | None = None) -> tuple[onnx.ModelProto, PruneReport]:
    options.validate()
    say = progress or (lambda message: None)
    scan = scan_layers(model, options.m, options.include, options.exclude, options.prune_head)
    if not scan.layers:
        raise no_layers_error(scan.skipped)
    layers, skipped = scan.layers, list(scan.skipped)
    reference = ReferenceOutputs(model, calibration)
    selection = []
    if options.max_error is not None:
        layers, dropped, selection = select_layers(model, layers, calibration, options, reference, say)
        skipped += [Skipped(layer.uses[0].node, layer.op_type, layer.weight,
                            f"pruning it would take the output error over --max-error {options.max_error:g}")
                    for layer in dropped]
        if not layers:
            raise OnnxSparseError(f"no layer can be pruned within --max-error {options.max_error:g}")

    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    if options.method == "magnitude" or not options.sequential:
        blocks = [layers]
    else:
        blocks = sequential_blocks(model, layers)
    results: list[LayerResult] = []
    done = 0
    position = {name: index for index, name in enumerate(node_names(model.graph))}
    frontier = Frontier(model, calibration)
    for number, block in enumerate(blocks):
        if number:  # every node before the first unpruned layer is final: run it once, keep the frontier
            frontier.advance(pruned, min(position[use.node] for later in blocks[number:] for layer in later for use in layer.uses))
        stats = capture(pruned, block, frontier.batches())
        for layer in block:
            done += 1
            out, result = prune_layer(layer, read_weight(pruned, layer), stats[layer.weight], options)
            write_weight(pruned, layer, out)
            results.append(result)
            say(f"[{done}/{len(layers)}] {layer.name} {layer.op_type} {list(layer.shape)}: "
                f"{options.method}, layer error {result.layer_error:.4f}")
    error = reference.error_of_model(pruned)
    report = PruneReport(
        method=options.method, n=options.n, m=options.m,
        calibration="random inputs from the model's input specs" if calibration.synthetic
        else f"{len(calibration.files)} .npz file(s)",
        layers=results, skipped=skipped, heads=sorted(scan.heads), total_params=weight_params(model),
        output_error=error, selection=selection,
    )
    return pruned, report
