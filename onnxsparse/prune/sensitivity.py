"""How much each layer's pruning costs the model's output, and choosing layers under a budget.

Both work from one capture of every layer's input Hessian on the dense model: each layer is
pruned once with the chosen method (independently of the others) and tried by feeding the pruned
weight to one session of the dense model (``WeightFeeds``), so a trial costs one pass over the
calibration data and no new session.

``select_layers`` (``prune --max-error E``): visit layers largest weight first; keep a layer when
the output error with it and every layer kept so far stays at most E. The chosen layers are then
pruned for real (sequentially for wanda/sparsegpt), which usually lands at or below the estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from ..errors import OnnxSparseError
from .calibration import Calibration
from .capture import capture
from .evaluate import OutputError, ReferenceOutputs, WeightFeeds
from .layers import Layer, read_weight
from .methods import prune_layer


@dataclass(frozen=True)
class LayerSensitivity:
    name: str
    op_type: str
    shape: tuple[int, ...]
    params: int
    layer_error: float | None
    output: OutputError

    def to_json(self) -> dict:
        return {"name": self.name, "op_type": self.op_type, "shape": list(self.shape), "params": self.params,
                "layer_error": self.layer_error, **self.output.to_json()}


def _pruned_alone(model: onnx.ModelProto, layers: list[Layer], calibration: Calibration, options, say):
    """Each layer's pruned weight and result, from the dense model's statistics."""
    say(f"capturing the inputs of {len(layers)} layer(s) on the dense model")
    stats = capture(model, layers, calibration)
    pruned = {}
    for layer in layers:
        pruned[layer.weight] = prune_layer(layer, read_weight(model, layer), stats[layer.weight], options)
    return pruned


def layer_sensitivity(model: onnx.ModelProto, layers: list[Layer], calibration: Calibration, options,
                      reference: ReferenceOutputs | None = None,
                      say: Callable[[str], None] = lambda message: None) -> list[LayerSensitivity]:
    """The model-output error caused by pruning each layer alone, most harmful first."""
    reference = reference or ReferenceOutputs(model, calibration)
    pruned = _pruned_alone(model, layers, calibration, options, say)
    feeds = WeightFeeds(model, layers)
    found = []
    for index, layer in enumerate(layers, 1):
        weight, result = pruned[layer.weight]
        error = reference.error(lambda batch: feeds.run(batch, {layer.weight: weight}))
        say(f"[{index}/{len(layers)}] {layer.name}: output relative L2 {error.rel_l2:.4f}, cosine {error.cosine:.5f}")
        found.append(LayerSensitivity(layer.name, layer.op_type, layer.shape, layer.params, result.layer_error, error))
    return sorted(found, key=lambda s: -s.output.rel_l2)


def select_layers(model: onnx.ModelProto, layers: list[Layer], calibration: Calibration, options,
                  reference: ReferenceOutputs, say: Callable[[str], None]):
    """(chosen layers in graph order, dropped layers, trace): greedy, largest weights first."""
    if options.max_error is None:
        raise OnnxSparseError("select_layers needs max_error")
    pruned = _pruned_alone(model, layers, calibration, options, say)
    feeds = WeightFeeds(model, layers)
    chosen: dict[str, np.ndarray] = {}
    trace = []
    order = sorted(layers, key=lambda layer: -layer.params)
    for index, layer in enumerate(order, 1):
        trial = {**chosen, layer.weight: pruned[layer.weight][0]}
        error = reference.error(lambda batch: feeds.run(batch, trial))
        keep = error.rel_l2 <= options.max_error
        if keep:
            chosen = trial
        trace.append({"name": layer.name, "params": layer.params, "kept": keep, **error.to_json()})
        say(f"[{index}/{len(order)}] {layer.name}: cumulative output relative L2 {error.rel_l2:.4f} "
            f"-> {'kept' if keep else 'left dense'}")
    return ([layer for layer in layers if layer.weight in chosen],
            [layer for layer in layers if layer.weight not in chosen], trace)
