"""An MLP of MatMuls saved with external data: the weights live in ``<name>.data`` beside the model.

Input ``features`` float ``[batch, 256]``; ``MatMul(X, W[K, N]) + b`` then Relu, three times
(256 -> 512 -> 512 -> 10), weights magnitude-pruned to 2:4 along K. Large enough that every weight
is over onnx's 1 KiB threshold for external data, small enough for a test.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from onnx import helper

from onnxsparse.io import save_model

from ._common import Weights, make_model, onnx_dtype

WIDTHS = (256, 512, 512, 10)


def build_mlp(dtype: str = "float32", seed: int = 0, widths: tuple[int, ...] = WIDTHS) -> onnx.ModelProto:
    """The MLP, in memory (weights embedded); ``save_external`` writes it with external data."""
    w = Weights(seed, dtype)
    nodes: list[onnx.NodeProto] = []

    def node(op: str, inputs: list[str], name: str, output: str | None = None) -> str:
        output = output or name + ".out"
        nodes.append(helper.make_node(op, inputs, [output], name=name))
        return output

    x = "features"
    layers = list(zip(widths, widths[1:]))
    for index, (k_in, n_out) in enumerate(layers):
        prefix = f"fc_{index}"
        final = index == len(layers) - 1
        weight = w.sparse(f"{prefix}.weight", (k_in, n_out), "kn", k_in)
        bias = w.vector(f"{prefix}.bias", n_out)
        x = node("Add", [node("MatMul", [x, weight], f"{prefix}/MatMul"), bias], f"{prefix}/Add",
                 "logits" if final else None)
        if not final:
            x = node("Relu", [x], f"{prefix}/Relu")
    elem = onnx_dtype(dtype)
    return make_model(
        "mlp",
        nodes,
        [helper.make_tensor_value_info("features", elem, ["batch", widths[0]])],
        [helper.make_tensor_value_info("logits", elem, ["batch", widths[-1]])],
        w,
        __doc__.strip().splitlines()[0],
    )


def save_external(path: str | os.PathLike, dtype: str = "float32", seed: int = 0) -> list[Path]:
    """Write the MLP to ``path`` with its weights in ``<path name>.data``; return the files written."""
    return save_model(build_mlp(dtype, seed), path, external_data=True)
