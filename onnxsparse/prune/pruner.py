"""Prune a dense ONNX model's Conv/MatMul/Gemm weights to N:M along SPEC's axis.

``prune_model(model, options, calibration)`` returns the pruned model and a ``PruneReport``.

- magnitude: needs no data; the calibration batches only measure the errors it causes.
- wanda, sparsegpt: sequential, as SparseGPT does: layers are visited in graph order in blocks of
  layers that do not feed one another (``sequential_blocks``); each block's input Hessians are
  captured from the model with every earlier block already pruned, so that a layer corrects the
  error of the layers before it. A ``Frontier`` of cached tensors keeps this to about two passes
  over the graph. ``sequential=False`` captures everything once, from the dense model.
- ``max_error`` and ``auto``: choose layers (and per layer the method) greedily with the held-out
  error re-measured at each step (``sensitivity.choose_layers``); the model returned is at most E on
  the held-out selection data: a fixed method's real (sequential) pruning of the chosen layers is
  kept only if it also is, otherwise the weights measured during the choice are.
- every reported error is measured on held-out data (``holdout``); the fit-data error beside it.
  When held-out data chose (``max_error``, ``auto``), the held-out part is split again
  (``holdout.selection_parts``): the error reported first is the verification part's, which the
  greedy did not see; the selection part's is reported beside it. E bounds both: when the
  verification part measures above E, the chosen layers go back to dense, the last kept first,
  until both parts are within E (``_back_off``; none left: nothing fits, nothing written).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import onnx

from ..errors import OnnxSparseError
from .calibration import Calibration
from .capture import Frontier, capture
from .evaluate import METRICS, OutputError, ReferenceOutputs
from .holdout import selection_parts, split_calibration
from .linalg import resolve_device
from .layers import Layer, Skipped, node_names, read_weight, scan_layers, weight_params, write_weight
from .methods import METHODS, LayerResult, prune_layer
from .sensitivity import ORDERS, choose_layers, label, nothing_fits

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
    device: str = "auto"  # where SparseGPT's linear algebra runs (linalg.DEVICES)
    order: str = "size"  # the greedy's visiting order under max_error / auto (sensitivity.ORDERS)
    pad_channels: bool = False  # prune group-1 Convs with C not a multiple of M as if zero-padded (channel_padding)
    error_metric: str = "l2"  # what --max-error bounds: output relative L2, or argmax flips (evaluate.METRICS)
    recover: int = 0  # Adam steps of distillation towards the dense model after pruning (recover.py); 0: none
    recover_lr: float = 1e-3

    def validate(self) -> None:
        if self.method not in (*METHODS, "auto"):
            raise OnnxSparseError(f"unknown method {self.method!r} (choose from {', '.join(METHODS)}, auto)")
        if not (0 < self.n < self.m):
            raise OnnxSparseError(f"N:M must have 0 < N < M, got {self.n}:{self.m}")
        if self.block_size < self.m:
            raise OnnxSparseError(f"--block-size {self.block_size} must be at least M={self.m}")
        if self.damp < 0:
            raise OnnxSparseError("--damp must be >= 0")
        if self.order not in ORDERS:
            raise OnnxSparseError(f"unknown --order {self.order!r} (choose from {', '.join(ORDERS)})")
        if self.error_metric not in METRICS:
            raise OnnxSparseError(f"unknown --error-metric {self.error_metric!r} (choose from {', '.join(METRICS)})")
        if self.error_metric != "l2" and self.max_error is None:
            raise OnnxSparseError("--error-metric says what --max-error bounds; give --max-error E too")
        if self.max_error is not None and self.max_error < 0:
            raise OnnxSparseError("--max-error must be >= 0")
        if self.recover < 0 or not (self.recover_lr > 0 and math.isfinite(self.recover_lr)):
            raise OnnxSparseError("--recover must be >= 0 steps and --recover-lr a positive number")
        if self.method != "magnitude" or self.max_error is not None:
            resolve_device(self.device)  # a wrong or unavailable --device is refused before any work


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
    selection: list[dict] = field(default_factory=list)  # --max-error / auto trace
    output_error_fit: OutputError | None = None  # the same on the fit data (optimistic for wanda/sparsegpt)
    holdout: str | None = None  # where the held-out data came from
    note: str | None = None
    output_error_selection: OutputError | None = None  # on the held-out data that chose (<= max_error)
    recovery: dict | None = None  # --recover: steps, learning rate, held-out error before and after, kept

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
            "output_error_fit": self.output_error_fit.to_json() if self.output_error_fit else None,
            "output_error_selection": (self.output_error_selection.to_json()
                                       if self.output_error_selection else None),
            "holdout": self.holdout, "note": self.note,
            "selection": self.selection, "recovery": self.recovery,
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


def _prune_all(model: onnx.ModelProto, layers: list[Layer], options: PruneOptions, fit, say: Progress):
    """Prune ``layers`` with one method: magnitude without data, wanda/sparsegpt from the fit data
    (sequential blocks unless ``sequential`` is off)."""
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    results: dict[str, LayerResult] = {}
    if options.method == "magnitude":
        for number, layer in enumerate(layers, 1):
            out, result = prune_layer(layer, read_weight(pruned, layer), None, options)
            write_weight(pruned, layer, out)
            results[layer.weight] = result
        say(f"magnitude: {len(layers)} layer(s) pruned")
        return pruned, results
    blocks = sequential_blocks(model, layers) if options.sequential else [layers]
    position = {name: index for index, name in enumerate(node_names(model.graph))}
    frontier = Frontier(model, fit)
    done = 0
    for number, block in enumerate(blocks):
        if number:  # every node before the first unpruned layer is final: run it once, keep the frontier
            frontier.advance(pruned, min(position[use.node] for later in blocks[number:] for layer in later for use in layer.uses))
        stats = capture(pruned, block, frontier.batches())
        for layer in block:
            done += 1
            out, result = prune_layer(layer, read_weight(pruned, layer), stats[layer.weight], options)
            result.method = label(options)
            write_weight(pruned, layer, out)
            results[layer.weight] = result
            say(f"[{done}/{len(layers)}] {layer.name} {layer.op_type} {list(layer.shape)}: "
                f"{label(options)}, layer error {result.layer_error:.4f}")
    return pruned, results


def prune_model(model: onnx.ModelProto, options: PruneOptions, calibration: Calibration | None = None,
                progress: Progress | None = None, holdout: Calibration | None = None
                ) -> tuple[onnx.ModelProto, PruneReport]:
    """Prune ``model``. ``calibration`` is needed by wanda, sparsegpt, auto and ``max_error``;
    magnitude without ``max_error`` uses it only to report the output error (None: no error).
    Errors are measured on held-out data (``holdout``, or a part of ``calibration``)."""
    options.validate()
    say = progress or (lambda message: None)
    scan = scan_layers(model, options.m, options.include, options.exclude, options.prune_head, options.pad_channels)
    if not scan.layers:
        raise no_layers_error(scan.skipped)
    layers, skipped = scan.layers, list(scan.skipped)
    if options.method != "magnitude" or options.max_error is not None:
        # Layer inputs are not captured inside If/Loop/Scan bodies and body weights cannot be fed.
        inside = [layer for layer in layers if layer.scope]
        why = (f"--method {options.method}" if options.method != "magnitude" else "--max-error")
        skipped += [Skipped(use.node, use.op_type, layer.weight,
                            f"inside {layer.scope}: {why} needs the layer's inputs on calibration data, which the "
                            "pruner does not capture inside subgraphs; --method magnitude (without --max-error) "
                            "prunes it") for layer in inside for use in layer.uses]
        layers = [layer for layer in layers if not layer.scope]
        if not layers:
            raise no_layers_error(skipped)
    if calibration is None and (options.method != "magnitude" or options.max_error is not None):
        raise OnnxSparseError(f"--method {options.method}" + (" with --max-error" if options.method == "magnitude" else "")
                              + " needs calibration data")
    if calibration is None and options.recover:
        raise OnnxSparseError("--recover needs calibration data (it fits the pruned model to the dense one's outputs)")
    split = split_calibration(calibration, holdout) if calibration is not None else None
    choosing = options.method == "auto" or options.max_error is not None
    parts = selection_parts(split.held) if choosing else None
    held = (ReferenceOutputs(model, parts.select if choosing else split.held) if split is not None else None)
    metric = options.error_metric
    if metric == "flips" and held is not None and not held.has_classes():
        raise OnnxSparseError("--error-metric flips needs an output whose last axis holds 2 or more classes "
                              "(the argmax over it is compared); this model has none: use --error-metric l2")
    selection, note, final_error = [], None, None
    description = split.description if split is not None else None
    if choosing:
        description = f"{split.description}; {parts.description}"
        extra = None
        if options.method == "auto":  # the sequential SparseGPT weight of each layer is one more candidate
            sequential = replace(options, method="sparsegpt", sequential=True, max_error=None, error_metric="l2")
            say("auto: sequential sparsegpt over every layer (one candidate per layer)")
            seq_model, seq_results = _prune_all(model, layers, sequential, split.fit, say)
            extra = {layer.weight: [(read_weight(seq_model, layer), seq_results[layer.weight])] for layer in layers}
        choice = choose_layers(model, layers, split.fit, options, held, say, extra)
        selection = choice.trace
        if not choice.weights:
            raise nothing_fits(options, choice)
        kept = [layer for layer in layers if layer.weight in choice.weights]
        skipped += [Skipped(layer.uses[0].node, layer.op_type, layer.weight,
                            f"pruning it would take the held-out output error over --max-error {options.max_error:g}")
                    for layer in layers if layer.weight not in choice.weights]
        measured = onnx.ModelProto()
        measured.CopyFrom(model)
        for layer in kept:
            write_weight(measured, layer, choice.weights[layer.weight])
        pruned, results, final_error = measured, choice.results, choice.error
        if options.method != "auto" and options.method != "magnitude":
            # Prune the chosen layers for real (sequentially); keep it only if it also stays within E.
            real, real_results = _prune_all(model, kept, options, split.fit, say)
            real_error = held.error_of_model(real)
            if real_error.key(metric) <= options.max_error:
                pruned, results, final_error = real, real_results, real_error
            else:
                note = (f"{label(options)} on the chosen layers gave held-out {real_error.text(metric)} "
                        f"> {options.max_error:g}; kept the weights measured during the selection instead")
                say(note)
        layers = kept
    else:
        pruned, results = _prune_all(model, layers, options, split.fit if split else None, say)
    recovery = None
    if options.recover:
        pruned, recovery, recovered_error = _recover(model, pruned, layers, options, split.fit, held, say)
        final_error = recovered_error or final_error
        if not recovery["kept"]:
            note = f"{note}; {recovery['note']}" if note else recovery["note"]
    error = error_fit = error_selection = None
    if split is not None:
        error = final_error or held.error_of_model(pruned)
        if choosing:  # the selection data chose within E; the verification data must hold it too
            error_selection = error
            verify = ReferenceOutputs(model, parts.verify) if parts.disjoint else None
            error = verify.error_of_model(pruned) if verify is not None else error
            if options.max_error is not None and error.key(metric) > options.max_error:
                backed = _back_off(model, pruned, error, layers, selection, options.max_error, held, verify, say,
                                   metric)
                pruned, error_selection, error = backed.model, backed.error_selection, backed.error_verify
                layers = [layer for layer in layers if layer.weight not in backed.dropped]
                skipped += [Skipped(layer.uses[0].node, layer.op_type, layer.weight,
                                    f"dropped after the choice: with it the verification data's output error was "
                                    f"above --max-error {options.max_error:g}")
                            for layer in backed.order if layer.weight in backed.dropped]
                note = f"{note}; {backed.note}" if note else backed.note
                say(backed.note)
        error_fit = ReferenceOutputs(model, split.fit).error_of_model(pruned) if split.disjoint else error
    report = PruneReport(
        method=options.method, n=options.n, m=options.m,
        calibration=("none (magnitude needs no data)" if calibration is None
                     else "random inputs from the model's input specs" if calibration.synthetic
                     else f"{len(calibration.files)} .npz file(s)"),
        layers=[results[layer.weight] for layer in layers], skipped=skipped, heads=sorted(scan.heads),
        total_params=weight_params(model), output_error=error, selection=selection,
        output_error_fit=error_fit, holdout=description, note=note, output_error_selection=error_selection,
        recovery=recovery,
    )
    return pruned, report


def _recover(model: onnx.ModelProto, pruned: onnx.ModelProto, layers: list[Layer], options: PruneOptions, fit,
             held: ReferenceOutputs, say: Progress) -> tuple[onnx.ModelProto, dict, OutputError | None]:
    """``--recover``: the pruned model distilled towards the dense one on the fit data (recover.py), kept
    only if the held-out data (the selection part when choosing) measures it lower; the verification and
    the back-off after it see the model kept. Returns (model, record, its held-out error or None)."""
    from .recover import recover

    metric = options.error_metric
    before = held.error_of_model(pruned)
    trained = recover(model, pruned, [layer.weight for layer in layers], fit, options.recover, options.recover_lr, say)
    after = held.error_of_model(trained)
    kept = (after.key(metric), after.rel_l2) < (before.key(metric), before.rel_l2)
    record = {"steps": options.recover, "lr": options.recover_lr, "kept": kept,
              "held_out_before": before.to_json(), "held_out_after": after.to_json(),
              "note": (f"--recover: held-out {before.text(metric)} -> {after.text(metric)}" if kept else
                       f"--recover did not lower the held-out error ({before.text(metric)} -> {after.text(metric)}); "
                       "kept the one-shot weights")}
    say(record["note"])
    return (trained, record, after) if kept else (pruned, record, None)


@dataclass
class _BackOff:
    model: onnx.ModelProto
    dropped: set[str]  # weights restored to dense
    order: list[Layer]  # the kept layers in the order the greedy kept them
    error_selection: OutputError
    error_verify: OutputError
    note: str


def _back_off(model: onnx.ModelProto, pruned: onnx.ModelProto, first: OutputError, layers: list[Layer],
              trace: list[dict], budget: float, select: ReferenceOutputs, verify: ReferenceOutputs,
              say: Progress, metric: str = "l2") -> _BackOff:
    """``--max-error`` on every held-out part: the chosen model measured ``first`` (above E) on the
    verification data, so the chosen layers go back to dense, the last one the greedy kept first,
    until both the selection and the verification data measure at most E. None left: nothing fits
    (an error)."""
    by_name = {layer.name: layer for layer in layers}
    order = [by_name[step["name"]] for step in trace if step["kept"] and step["name"] in by_name]
    order += [layer for layer in layers if layer not in order]  # (every kept layer is in the trace)
    current = onnx.ModelProto()
    current.CopyFrom(pruned)
    dropped: set[str] = set()
    on_verify = first
    for layer in reversed(order):
        if len(dropped) == len(order) - 1:
            break  # `on_verify` is the first layer's alone
        write_weight(current, layer, read_weight(model, layer))
        dropped.add(layer.weight)
        on_verify = verify.error_of_model(current)
        say(f"verification {first.text(metric)} > --max-error {budget:g}: {layer.name} back to dense -> "
            f"{on_verify.text(metric)}")
        if on_verify.key(metric) > budget:
            continue
        on_select = select.error_of_model(current)
        if on_select.key(metric) <= budget:
            kept = len(order) - len(dropped)
            return _BackOff(current, dropped, order, on_select, on_verify,
                            f"on the verification data (held out, not used for choosing) the chosen {len(order)} "
                            f"layer(s) measured {first.text(metric)} > --max-error {budget:g}; "
                            f"the last {len(dropped)} chosen went back to dense, the {kept} kept measure "
                            f"{on_verify.text(metric)} there and {on_select.text(metric)} on the selection data "
                            "(more held-out data, --holdout, makes the two agree)")
    raise OnnxSparseError(f"no layer can be pruned within --max-error {budget:g} on every held-out part: the "
                          f"{len(order)} layer(s) chosen on the selection data measured {first.text(metric)} "
                          f"on the verification data; dropping the last chosen one by one, the "
                          f"closest is {order[0].name} (verification {on_verify.text(metric)} "
                          "alone); nothing written (give more held-out data with --holdout, or a larger --max-error)")

