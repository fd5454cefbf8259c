"""A small transformer encoder with 2:4-sparse projection weights.

Input ``tokens`` float ``[batch, seq, hidden]`` (token embeddings, batch and seq dynamic); output
``hidden_states`` of the same shape. Each layer, as exporters write it::

    h   = x + MatMul(Attention(LayerNorm(x)), W_o) + b_o          Q/K/V/O: MatMul(X, W[K, N]) + Add
    out = h + Reshape(MatMul(GELU(Gemm(Reshape(LayerNorm(h), [-1, hidden]), W_1, b_1, transB=1)), W_2) + b_2)

so the FFN's first weight is Gemm's ``B[ffn, hidden]`` (layout "nk") and every other projection is
a MatMul ``W[K, N]`` (layout "kn"). Layer 1 shares layer 0's query weight through an ``Identity``,
the way torch.onnx exports tied parameters. All projection weights are magnitude-pruned to 2:4
along K; LayerNorm parameters and biases are dense.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ._common import Weights, make_model, onnx_dtype

SHARED_WEIGHT = "layers.0.attn.q_proj.weight"
# The bundled sample (models/samples/tiny_transformer.onnx): the same graph, narrower, ~100 KB.
TINY = {"hidden": 32, "ffn": 128, "layers": 2, "heads": 2}


def build_transformer(
    dtype: str = "float32",
    seed: int = 0,
    hidden: int = 64,
    ffn: int = 256,
    layers: int = 2,
    heads: int = 4,
    activation: str = "gelu",
) -> onnx.ModelProto:
    """A transformer encoder with 2:4 weights; ``activation`` is ``"gelu"`` (Erf form) or ``"relu"``."""
    if hidden % heads:
        raise ValueError(f"hidden={hidden} is not a multiple of heads={heads}")
    if activation not in ("gelu", "relu"):
        raise ValueError(f"activation must be 'gelu' or 'relu', got {activation!r}")
    w = Weights(seed, dtype)
    head_dim = hidden // heads
    w.constant("shape.split_heads", [0, 0, heads, head_dim], np.int64)
    w.constant("shape.merge_heads", [0, 0, hidden], np.int64)
    w.constant("shape.flatten_tokens", [-1, hidden], np.int64)
    w.constant("attn.scale", 1.0 / np.sqrt(head_dim))
    if activation == "gelu":
        w.constant("gelu.sqrt2", np.sqrt(2.0))
        w.constant("gelu.one", 1.0)
        w.constant("gelu.half", 0.5)

    nodes: list[onnx.NodeProto] = []

    def node(op: str, inputs: list[str], name: str, output: str | None = None, **attrs) -> str:
        output = output or name + ".out"
        nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def layer_norm(x: str, prefix: str, output: str | None = None) -> str:
        scale = w.vector(f"{prefix}.weight", hidden, offset=1.0)
        bias = w.vector(f"{prefix}.bias", hidden)
        return node("LayerNormalization", [x, scale, bias], prefix, output, axis=-1, epsilon=1e-5)

    def linear(x: str, prefix: str, n_out: int, k_in: int, weight: str | None = None) -> str:
        """MatMul(X, W[K, N]) + b, W pruned to 2:4 along K (layout "kn")."""
        weight = weight or w.sparse(f"{prefix}.weight", (k_in, n_out), "kn", k_in)
        bias = w.vector(f"{prefix}.bias", n_out)
        return node("Add", [node("MatMul", [x, weight], f"{prefix}/MatMul"), bias], f"{prefix}/Add")

    x = "tokens"
    for index in range(layers):
        p = f"layers.{index}"
        normed = layer_norm(x, f"{p}.ln_1")
        query_weight = None
        if index == 1:
            # Exporters share a tied parameter through an Identity of the one initializer.
            query_weight = node("Identity", [SHARED_WEIGHT], f"{p}.attn.q_proj.weight/Identity")
        q = linear(normed, f"{p}.attn.q_proj", hidden, hidden, query_weight)
        k = linear(normed, f"{p}.attn.k_proj", hidden, hidden)
        v = linear(normed, f"{p}.attn.v_proj", hidden, hidden)
        q = node("Transpose", [node("Reshape", [q, "shape.split_heads"], f"{p}.attn/q/Reshape")],
                 f"{p}.attn/q/Transpose", perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [k, "shape.split_heads"], f"{p}.attn/k/Reshape")],
                 f"{p}.attn/k/Transpose", perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [v, "shape.split_heads"], f"{p}.attn/v/Reshape")],
                 f"{p}.attn/v/Transpose", perm=[0, 2, 1, 3])
        scores = node("Mul", [node("MatMul", [q, k], f"{p}.attn/scores/MatMul"), "attn.scale"], f"{p}.attn/scores/Mul")
        probs = node("Softmax", [scores], f"{p}.attn/Softmax", axis=-1)
        context = node("MatMul", [probs, v], f"{p}.attn/context/MatMul")
        context = node("Transpose", [context], f"{p}.attn/context/Transpose", perm=[0, 2, 1, 3])
        context = node("Reshape", [context, "shape.merge_heads"], f"{p}.attn/context/Reshape")
        attended = linear(context, f"{p}.attn.out_proj", hidden, hidden)
        h = node("Add", [x, attended], f"{p}/residual_1")

        normed = layer_norm(h, f"{p}.ln_2")
        flat = node("Reshape", [normed, "shape.flatten_tokens"], f"{p}.mlp/Reshape")
        fc1_weight = w.sparse(f"{p}.mlp.fc_1.weight", (ffn, hidden), "nk", hidden)
        fc1_bias = w.vector(f"{p}.mlp.fc_1.bias", ffn)
        up = node("Gemm", [flat, fc1_weight, fc1_bias], f"{p}.mlp.fc_1/Gemm", transB=1)
        if activation == "gelu":
            erf = node("Erf", [node("Div", [up, "gelu.sqrt2"], f"{p}.mlp.gelu/Div")], f"{p}.mlp.gelu/Erf")
            gate = node("Add", [erf, "gelu.one"], f"{p}.mlp.gelu/Add")
            up = node("Mul", [node("Mul", [up, gate], f"{p}.mlp.gelu/Mul"), "gelu.half"], f"{p}.mlp.gelu/Mul_1")
        else:
            up = node("Relu", [up], f"{p}.mlp/Relu")
        down = linear(up, f"{p}.mlp.fc_2", hidden, ffn)
        down = node("Reshape", [down, node("Shape", [h], f"{p}.mlp/Shape")], f"{p}.mlp/Reshape_1")
        x = node("Add", [h, down], f"{p}/residual_2")

    layer_norm(x, "ln_f", output="hidden_states")
    elem = onnx_dtype(dtype)
    return make_model(
        "transformer",
        nodes,
        [helper.make_tensor_value_info("tokens", elem, ["batch", "seq", hidden])],
        [helper.make_tensor_value_info("hidden_states", elem, ["batch", "seq", hidden])],
        w,
        __doc__.strip().splitlines()[0],
    )


def build_tiny_transformer(dtype: str = "float32", seed: int = 0) -> onnx.ModelProto:
    """The bundled sample: ``build_transformer`` with hidden 32, ffn 128, 2 layers, 2 heads."""
    return build_transformer(dtype, seed, **TINY)
