"""Model-output error of a pruned model against the dense one, on the calibration data.

``ReferenceOutputs`` runs the dense model once and keeps its outputs (float32, up to
``CACHE_LIMIT`` bytes; beyond that it runs the dense model again for each comparison).
``WeightFeeds`` is one session of the dense model whose prunable weights are also graph inputs,
so that trying a pruned weight (sensitivity, greedy selection) is a feed, not a new session.

The error of all outputs taken together, flattened, by ``onnxsparse.metrics`` (the metric
``onnxsparse verify`` uses per output): relative L2 = ||y' - y|| / ||y||, and cosine similarity
= <y, y'> / (||y|| ||y'||). Beside them, for the outputs whose last axis holds 2 or more classes,
the argmax flips: the fraction of positions (every index but the last axis's) whose argmax over the
last axis differs from the dense model's. For a classifier that is the share of samples whose
predicted class changes, a bound on how much its accuracy can move; no labels needed.
``--error-metric`` says which one ``--max-error`` bounds (``METRICS``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import OnnxSparseError
from ..metrics import ErrorSums
from .files import dense_session
from .layers import Layer

CACHE_LIMIT = 1 << 30
METRICS = ("l2", "flips")  # what --max-error bounds: relative L2, or the argmax flips


@dataclass(frozen=True)
class OutputError:
    rel_l2: float
    cosine: float
    flips: float = math.nan  # argmax flips (NaN: no output has a class axis)

    def value(self, metric: str = "l2") -> float:
        """The number ``metric`` compares with --max-error (NaN stays NaN)."""
        return self.flips if metric == "flips" else self.rel_l2

    def key(self, metric: str = "l2") -> float:
        """``value`` for comparisons and sorting: NaN (a NaN output, or no class axis) as +inf."""
        value = self.value(metric)
        return math.inf if math.isnan(value) else value

    def text(self, metric: str = "l2") -> str:
        return error_text(self.value(metric), metric)

    def to_json(self) -> dict:
        found = {"relative_l2": self.rel_l2, "cosine": self.cosine}
        if not math.isnan(self.flips):
            found["argmax_flips"] = self.flips
        return found


def error_text(value: float, metric: str = "l2") -> str:
    """A value of ``metric`` as the reports say it."""
    if metric == "flips":
        return f"argmax flips {100.0 * value:.2f}%"
    return f"output relative L2 {value:.4f}"


def has_class_axis(output: np.ndarray) -> bool:
    """An output whose last axis can be read as classes (2 or more of them)."""
    return output.ndim >= 1 and output.shape[-1] >= 2


def _session(model: onnx.ModelProto):
    """A quiet CPU session of the dense model (the package's one session factory; ``files``: weights
    mapped from their files)."""
    return dense_session(model)


def _run(runner, batch: dict, weights: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    fed = {i.name: batch[i.name] for i in runner.get_inputs() if i.name in batch}
    fed.update(weights or {})
    try:
        return runner.run(None, fed)
    except Exception as exc:
        raise OnnxSparseError(f"ONNX Runtime failed on a calibration batch: {str(exc).splitlines()[0]}") from None


class ReferenceOutputs:
    def __init__(self, model: onnx.ModelProto, batches: Iterable[dict]):
        self.model = model
        self.batches = batches
        self.cache: list[list[np.ndarray]] | None = []
        size = 0
        dense = _session(model)
        for batch in batches:
            outputs = [np.asarray(o, dtype=np.float32) for o in _run(dense, batch)]
            size += sum(o.nbytes for o in outputs)
            if size > CACHE_LIMIT:
                self.cache = None
                break
            self.cache.append(outputs)
        self._dense = None if self.cache is not None else dense

    def _dense_outputs(self):
        if self.cache is not None:
            yield from self.cache
        else:
            for batch in self.batches:
                yield [np.asarray(o, dtype=np.float32) for o in _run(self._dense, batch)]

    def error(self, run: Callable[[dict], list[np.ndarray]]) -> OutputError:
        """Error of ``run(batch) -> outputs`` against the dense outputs over every batch (all
        outputs taken together; NaN when the run gives a NaN where the dense model does not)."""
        sums = ErrorSums()
        flipped = positions = 0
        for batch, dense in zip(self.batches, self._dense_outputs()):
            for a, b in zip(dense, run(batch)):
                sums.add(a, b)
                if has_class_axis(a):
                    b = np.asarray(b, dtype=np.float32)
                    flipped += int(np.count_nonzero(np.argmax(a, axis=-1) != np.argmax(b, axis=-1)))
                    positions += a.size // a.shape[-1]
        if sums.nan_mismatch:
            return OutputError(rel_l2=math.nan, cosine=math.nan)
        return OutputError(rel_l2=sums.rel_l2, cosine=sums.cosine,
                           flips=flipped / positions if positions else math.nan)

    def has_classes(self) -> bool:
        """Whether some output has a class axis (so that the argmax flips are defined)."""
        for outputs in self._dense_outputs():
            return any(has_class_axis(o) for o in outputs)
        return False

    def error_of_model(self, model: onnx.ModelProto) -> OutputError:
        runner = _session(model)
        return self.error(lambda batch: _run(runner, batch))


class WeightFeeds:
    """The dense model with the layers' weights turned into overridable graph inputs."""

    def __init__(self, model: onnx.ModelProto, layers: list[Layer]):
        feedable = onnx.ModelProto()
        feedable.CopyFrom(model)
        graph = feedable.graph
        weights = {layer.weight for layer in layers}
        constants = [n for n in graph.node if n.op_type == "Constant" and n.output[0] in weights]
        for node in constants:  # a Constant becomes an initializer so that it can be fed
            value = next(a.t for a in node.attribute if a.name == "value")
            tensor = numpy_helper.from_array(numpy_helper.to_array(value), node.output[0])
            graph.initializer.append(tensor)
            graph.node.remove(node)
        for tensor in graph.initializer:
            if tensor.name in weights:
                graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
        if feedable.ir_version < 4:
            feedable.ir_version = 4
        self.runner = _session(feedable)

    def run(self, batch: dict, weights: dict[str, np.ndarray]) -> list[np.ndarray]:
        return _run(self.runner, batch, weights)
