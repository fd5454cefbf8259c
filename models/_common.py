"""Helpers shared by the generators: seeded 2:4 weights and the model envelope (IR 10, opset 17)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxsparse.format import prune_weight_magnitude

IR_VERSION = 10
OPSET = 17
DTYPES = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16}
PRODUCER = "onnxsparse.models"


def onnx_dtype(dtype: str) -> int:
    """The TensorProto element type of ``"float32"`` or ``"float16"``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


class Weights:
    """Collects a model's initializers, drawing them from one seeded generator in call order."""

    def __init__(self, seed: int, dtype: str):
        onnx_dtype(dtype)
        self.rng = np.random.default_rng(seed)
        self.dtype = np.dtype(dtype)
        self.initializers: list[onnx.TensorProto] = []

    def add(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array, self.dtype), name))
        return name

    def dense(self, name: str, shape: tuple[int, ...], fan_in: int) -> str:
        """A dense random weight, scaled by 1/sqrt(fan_in) so activations stay near unit size."""
        array = self.rng.standard_normal(shape) / np.sqrt(fan_in)
        return self.add(name, array.astype(self.dtype))

    def sparse(self, name: str, shape: tuple[int, ...], layout: str, fan_in: int) -> str:
        """A random weight magnitude-pruned to 2:4 along SPEC's axis for ``layout``.

        Pruned after the cast so that no element the pruning kept rounds to zero in fp16.
        The scale is doubled to make up for the half of the products that pruning drops.
        """
        array = (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(self.dtype)
        return self.add(name, prune_weight_magnitude(array, layout))

    def vector(self, name: str, size: int, scale: float = 0.1, offset: float = 0.0) -> str:
        return self.add(name, (offset + scale * self.rng.standard_normal(size)).astype(self.dtype))

    def constant(self, name: str, value, dtype=None) -> str:
        """A fixed (not random) initializer: shapes, scalars; the model's dtype unless told."""
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype or self.dtype), name))
        return name


def make_model(
    name: str,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    weights: Weights,
    doc: str,
) -> onnx.ModelProto:
    """Wrap a graph into a checked model with the project's IR version and opset."""
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=weights.initializers, doc_string=doc)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name=PRODUCER,
        producer_version="1",
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def global_average_pool(nodes: list[onnx.NodeProto], x: str) -> str:
    """GlobalAveragePool of ``x`` (the image classifiers' pool before their head): ``avgpool.out``."""
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["avgpool.out"], name="avgpool/GlobalAveragePool"))
    return "avgpool.out"


def classifier_head(nodes: list[onnx.NodeProto], weights: Weights, x: str, features: int, classes: int) -> str:
    """``Flatten`` and ``Gemm(transB=1)`` with a 2:4 weight [classes, features] and a bias: the image
    classifiers' last layer, ``logits``. Draws ``fc.weight`` then ``fc.bias`` from ``weights``."""
    nodes.append(helper.make_node("Flatten", [x], ["flatten.out"], name="flatten/Flatten", axis=1))
    fc_w = weights.sparse("fc.weight", (classes, features), "nk", features)
    fc_b = weights.vector("fc.bias", classes)
    nodes.append(helper.make_node("Gemm", ["flatten.out", fc_w, fc_b], ["logits"], name="fc/Gemm", transB=1))
    return "logits"
