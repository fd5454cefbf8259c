"""Model-output error of a pruned model against the dense one, on the calibration data.

``ReferenceOutputs`` runs the dense model once and keeps its outputs (float32, up to
``CACHE_LIMIT`` bytes; beyond that it runs the dense model again for each comparison).
``WeightFeeds`` is one session of the dense model whose prunable weights are also graph inputs,
so that trying a pruned weight (sensitivity, greedy selection) is a feed, not a new session.

The error of all outputs taken together, flattened, by ``onnxsparse.metrics`` (the metric
``onnxsparse verify`` uses per output): relative L2 = ||y' - y|| / ||y||, and cosine similarity
= <y, y'> / (||y|| ||y'||).
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


@dataclass(frozen=True)
class OutputError:
    rel_l2: float
    cosine: float

    def to_json(self) -> dict:
        return {"relative_l2": self.rel_l2, "cosine": self.cosine}


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
        for batch, dense in zip(self.batches, self._dense_outputs()):
            for a, b in zip(dense, run(batch)):
                sums.add(a, b)
        if sums.nan_mismatch:
            return OutputError(rel_l2=math.nan, cosine=math.nan)
        return OutputError(rel_l2=sums.rel_l2, cosine=sums.cosine)

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
