"""How much each layer's pruning costs the model's output, and choosing layers and methods under a budget.

Every error here is measured on held-out data (``holdout.split_calibration``): the Hessians are
captured on the fit part, the output errors compared on the held-out part.

Both work from one capture of every layer's input Hessian on the dense model: each layer is
pruned with each candidate (independently of the others) and tried by feeding the pruned weight
to one session of the dense model (``WeightFeeds``), so a trial costs one pass over the held-out
data and no new session.

Candidates: the chosen method, or with ``--method auto`` magnitude, Wanda, SparseGPT at damping
``AUTO_DAMPS`` from the dense model's inputs, and the weight sequential SparseGPT gives when it
prunes every layer (``sequential`` below, supplied by the pruner).

``choose_layers`` (``prune --max-error E`` and ``--method auto``): greedy with re-measurement.
Visit layers in ``order``; for each, measure the held-out output error of the model with every
layer kept so far plus this layer under each candidate; keep the best candidate when that error is
at most E. The kept weights are exactly the ones measured, so the model they make is at most E on
the held-out data. Orders (``ORDERS``):

- ``size``: largest weight first, every candidate tried in the context of the layers kept so far;
- ``ratio``: a knapsack-style order: first each candidate of each layer alone (the sensitivity
  pass), then layers by weights saved per unit of squared error alone (``params / error**2``:
  independent errors add roughly in squares), most first, each under its best candidate alone.
  A large layer that costs much of the budget no longer shuts out several cheaper ones worth
  more weights; one trial per layer in the greedy pass instead of one per candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import numpy as np
import onnx

from ..errors import OnnxSparseError
from .capture import capture
from .evaluate import OutputError, ReferenceOutputs, WeightFeeds, error_text
from .layers import Layer, read_weight
from .methods import LayerResult, prune_layer

AUTO_DAMPS = (0.01, 0.1)
ORDERS = ("size", "ratio")


@dataclass(frozen=True)
class LayerSensitivity:
    name: str
    op_type: str
    shape: tuple[int, ...]
    params: int
    layer_error: float | None
    output: OutputError
    method: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "op_type": self.op_type, "shape": list(self.shape), "params": self.params,
                "layer_error": self.layer_error, "method": self.method, **self.output.to_json()}


def candidate_options(options) -> list:
    """The (method, damping, sequential) settings tried per layer: one, or the auto grid."""
    if options.method != "auto":
        return [options]
    return ([replace(options, method="magnitude"), replace(options, method="wanda", sequential=False)]
            + [replace(options, method="sparsegpt", damp=d, sequential=False) for d in AUTO_DAMPS])


def label(options) -> str:
    if options.method != "sparsegpt":
        return options.method + ("" if options.method == "magnitude" or not options.sequential else " sequential")
    return f"sparsegpt damp={options.damp:g}" + (" sequential" if options.sequential else "")


def pruned_candidates(model: onnx.ModelProto, layers: list[Layer], fit: Iterable[dict], options,
                      say: Callable[[str], None],
                      extra: dict[str, list[tuple[np.ndarray, LayerResult]]] | None = None):
    """weight -> [(pruned weight, result)] per candidate, from the dense model's statistics (fit data)."""
    settings = candidate_options(options)
    needs_stats = any(s.method != "magnitude" for s in settings)
    stats = {}
    if needs_stats:
        say(f"capturing the inputs of {len(layers)} layer(s) on the dense model")
        stats = capture(model, layers, fit)
    found = {}
    for layer in layers:
        dense = read_weight(model, layer)
        tries = []
        for setting in settings:
            out, result = prune_layer(layer, dense, stats.get(layer.weight), setting)
            result.method = label(setting)
            tries.append((out, result))
        found[layer.weight] = tries + list((extra or {}).get(layer.weight, []))
    return found


def layer_sensitivity(model: onnx.ModelProto, layers: list[Layer], calibration: Iterable[dict], options,
                      reference: ReferenceOutputs | None = None,
                      say: Callable[[str], None] = lambda message: None) -> list[LayerSensitivity]:
    """The model-output error caused by pruning each layer alone, most harmful first. ``calibration``
    is the fit data; ``reference`` holds the dense outputs of the held-out data (by default the fit
    data itself). With ``--method auto``, each layer's best candidate."""
    reference = reference or ReferenceOutputs(model, calibration)
    pruned = pruned_candidates(model, layers, calibration, options, say)
    feeds = WeightFeeds(model, layers)
    found = []
    for index, layer in enumerate(layers, 1):
        best = None
        for weight, result in pruned[layer.weight]:
            error = reference.error(lambda batch: feeds.run(batch, {layer.weight: weight}))
            if best is None or error.key() < best[0].key():
                best = (error, result)
        error, result = best
        flips = "" if math.isnan(error.flips) else f", {error.text('flips')}"
        say(f"[{index}/{len(layers)}] {layer.name}: held-out output relative L2 {error.rel_l2:.4f}, "
            f"cosine {error.cosine:.5f}{flips} ({result.method})")
        found.append(LayerSensitivity(layer.name, layer.op_type, layer.shape, layer.params, result.layer_error,
                                      error, result.method))
    return sorted(found, key=lambda s: -s.output.key())


@dataclass
class Choice:
    weights: dict[str, np.ndarray]  # weight -> the pruned values kept
    results: dict[str, LayerResult]
    error: OutputError | None  # held-out error of the model with exactly these weights
    trace: list[dict]
    closest: tuple[str, float] | None  # the layer with the lowest error when tried, and that error


def choose_layers(model: onnx.ModelProto, layers: list[Layer], fit: Iterable[dict], options,
                  reference: ReferenceOutputs, say: Callable[[str], None],
                  extra: dict[str, list[tuple[np.ndarray, LayerResult]]] | None = None) -> Choice:
    """Greedy, largest weights first, each layer under its best candidate in the context of the
    layers kept so far; a layer is kept when the measured held-out error stays <= max_error
    (every layer is kept when max_error is None)."""
    budget = math.inf if options.max_error is None else options.max_error
    metric = options.error_metric
    pruned = pruned_candidates(model, layers, fit, options, say, extra)
    feeds = WeightFeeds(model, layers)
    chosen: dict[str, np.ndarray] = {}
    results: dict[str, LayerResult] = {}
    trace, error_now, closest = [], None, None
    alone: dict[str, float] = {}  # ratio order: each layer's error alone, in the metric E bounds
    alone_label = "alone_relative_l2" if metric == "l2" else "alone_argmax_flips"
    if getattr(options, "order", "size") == "ratio":
        say(f"ratio order: each candidate of {len(layers)} layer(s) alone on the held-out data")
        for layer in layers:
            tries = [(reference.error(lambda batch: feeds.run(batch, {layer.weight: w})), w, r)
                     for w, r in pruned[layer.weight]]
            best_alone = min(tries, key=lambda t: (t[0].key(metric), t[0].key()))
            alone[layer.weight] = best_alone[0].key(metric)
            pruned[layer.weight] = [best_alone[1:]]
        order = ratio_order(layers, alone)
    else:
        order = sorted(layers, key=lambda layer: -layer.params)
    for index, layer in enumerate(order, 1):
        best = None
        for weight, result in pruned[layer.weight]:
            trial = {**chosen, layer.weight: weight}
            error = reference.error(lambda batch: feeds.run(batch, trial))
            if best is None or (error.key(metric), error.key()) < (best[0].key(metric), best[0].key()):
                best = (error, weight, result)
        error, weight, result = best
        keep = error.key(metric) <= budget
        if closest is None or error.key(metric) < closest[1]:
            closest = (layer.name, error.key(metric))
        if keep:
            chosen[layer.weight] = weight
            results[layer.weight] = result
            error_now = error
        trace.append({"name": layer.name, "params": layer.params, "kept": keep, "method": result.method,
                      **error.to_json(), **({alone_label: alone[layer.weight]} if alone else {})})
        say(f"[{index}/{len(order)}] {layer.name}: held-out {error.text(metric)} with the layers kept so far "
            f"({result.method}) -> {'kept' if keep else 'left dense'}")
    return Choice(chosen, results, error_now, trace, closest)


def ratio_order(layers: list[Layer], alone: dict[str, float]) -> list[Layer]:
    """Layers by weights per squared held-out error when pruned alone, most first (an error of 0
    first, larger layers first among them; NaN or inf last)."""
    def key(layer: Layer):
        error = alone[layer.weight]
        if not math.isfinite(error):
            return (2, 0.0, -layer.params)
        if error == 0:
            return (0, 0.0, -layer.params)
        return (1, -layer.params / error**2, -layer.params)
    return sorted(layers, key=key)


def nothing_fits(options, choice: Choice) -> OnnxSparseError:
    name, error = choice.closest if choice.closest else ("-", math.nan)
    shown = error_text(error, options.error_metric)
    return OnnxSparseError(f"no layer can be pruned within --max-error {options.max_error:g}: the closest is "
                           f"{name} (held-out {shown} when pruned alone); nothing written")
