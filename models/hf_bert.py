"""A dense BERT for sequence classification, laid out as a Hugging Face export writes it.

``transformers``' ``BertForSequenceClassification`` exported by ``torch.onnx.export``, without
``transformers`` or a download: the same ops in the same places, at a small size and with random
dense weights (this is a model to *prune*, not a 2:4 sample). Inputs ``input_ids`` and
``attention_mask``, int64 ``[batch, seq]``; outputs ``last_hidden_state`` ``[batch, seq, hidden]``
and ``logits`` ``[batch, labels]``. Per encoder layer::

    q, k, v = MatMul(x, W[hidden, hidden]) + b                    attention.self.{query,key,value}
    ctx     = Softmax(q @ k^T / sqrt(d) + mask) @ v                (Reshape/Transpose per head)
    x       = LayerNorm(x + MatMul(ctx, W_o) + b_o)               attention.output.dense + residual
    x       = LayerNorm(x + MatMul(GELU(MatMul(x, W_i) + b_i), W_out) + b_out)   intermediate/output

then the pooler ``Tanh(Gemm(x[:, 0], W_p, b_p, transB=1))`` and the classifier
``Gemm(pooled, W_c, b_c, transB=1)``, the model's real head. The embeddings (word, position, token
type) are ``Gather``s followed by a LayerNorm; the mask is ``(1 - mask) * -10000`` (as BERT's
exports before transformers 4.x's float-minimum mask, which overflows on masks other than 0/1).

    python -m models.hf_bert OUT.onnx [--layers 2] [--hidden 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "models"  # noqa: A001

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from ._common import Weights, make_model  # noqa: E402

TINY = {"hidden": 64, "ffn": 256, "layers": 2, "heads": 4, "vocab": 128, "positions": 64, "labels": 2}


def linear_names(layers: int) -> list[str]:
    """The MatMul/Gemm nodes of the model in graph order; the last, ``classifier``, is the head."""
    names = []
    for index in range(layers):
        p = f"/bert/encoder/layer.{index}"
        names += [f"{p}/attention/self/query/MatMul", f"{p}/attention/self/key/MatMul",
                  f"{p}/attention/self/value/MatMul", f"{p}/attention/output/dense/MatMul",
                  f"{p}/intermediate/dense/MatMul", f"{p}/output/dense/MatMul"]
    return names + ["/bert/pooler/dense/Gemm", "/classifier/Gemm"]


def build_hf_bert(seed: int = 0, hidden: int = 64, ffn: int = 256, layers: int = 2, heads: int = 4,
                  vocab: int = 128, positions: int = 64, labels: int = 2) -> onnx.ModelProto:
    """The graph a torch export of ``BertForSequenceClassification`` gives, with random dense weights."""
    if hidden % heads:
        raise ValueError(f"hidden={hidden} is not a multiple of heads={heads}")
    w = Weights(seed, "float32")
    head_dim = hidden // heads
    nodes: list[onnx.NodeProto] = []

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        output = name + "_output_0"
        nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def const(name: str, value, dtype=np.float32) -> str:
        return w.constant(name, value, dtype)

    def layer_norm(x: str, prefix: str) -> str:
        scale = w.vector(f"{prefix}.weight", hidden, offset=1.0)
        bias = w.vector(f"{prefix}.bias", hidden)
        return node("LayerNormalization", [x, scale, bias], prefix.replace(".", "/") + "/LayerNormalization",
                    axis=-1, epsilon=1e-12)

    def linear(x: str, prefix: str, k_in: int, n_out: int) -> str:
        """torch's Linear on a 3-D input: MatMul with the transposed weight W[K, N], then Add."""
        weight = w.dense(f"onnx::MatMul_{prefix}", (k_in, n_out), k_in)
        bias = w.vector(f"{prefix[1:].replace('/', '.')}.bias", n_out)
        return node("Add", [bias, node("MatMul", [x, weight], f"{prefix}/MatMul")], f"{prefix}/Add")

    def gemm(x: str, prefix: str, k_in: int, n_out: int) -> str:
        """torch's Linear on a 2-D input: Gemm(x, W[N, K], b, transB=1)."""
        name = prefix[1:].replace("/", ".")
        weight = w.dense(f"{name}.weight", (n_out, k_in), k_in)
        bias = w.vector(f"{name}.bias", n_out)
        return node("Gemm", [x, weight, bias], f"{prefix}/Gemm", alpha=1.0, beta=1.0, transB=1)

    # Embeddings: word + position (0..seq-1) + token type 0, then LayerNorm.
    words = node("Gather", [w.dense("bert.embeddings.word_embeddings.weight", (vocab, hidden), 1), "input_ids"],
                 "/bert/embeddings/word_embeddings/Gather")
    seq = node("Gather", [node("Shape", ["input_ids"], "/bert/embeddings/Shape"), const("/bert/embeddings/one", 1, np.int64)],
               "/bert/embeddings/Gather_seq", axis=0)
    position_ids = node("Range", [const("/bert/embeddings/zero", 0, np.int64), seq, const("/bert/embeddings/step", 1, np.int64)],
                        "/bert/embeddings/Range")
    position = node("Gather", [w.dense("bert.embeddings.position_embeddings.weight", (positions, hidden), 1), position_ids],
                    "/bert/embeddings/position_embeddings/Gather")
    token_type = w.dense("bert.embeddings.token_type_embeddings.row0", (hidden,), 1)
    summed = node("Add", [node("Add", [words, token_type], "/bert/embeddings/Add"), position], "/bert/embeddings/Add_1")
    x = layer_norm(summed, "bert.embeddings.LayerNorm")

    # Extended attention mask [batch, 1, 1, seq]: 0 where attended, the float minimum elsewhere.
    mask = node("Unsqueeze", ["attention_mask", const("/bert/mask/axes", [1, 2], np.int64)], "/bert/Unsqueeze")
    mask = node("Cast", [mask], "/bert/Cast", to=TensorProto.FLOAT)
    mask = node("Sub", [const("/bert/mask/one", 1.0), mask], "/bert/Sub")
    mask = node("Mul", [mask, const("/bert/mask/min", -10000.0)], "/bert/Mul")

    split = const("/bert/split_heads", [0, 0, heads, head_dim], np.int64)
    merge = const("/bert/merge_heads", [0, 0, hidden], np.int64)
    scale = const("/bert/attention/scale", np.sqrt(head_dim))
    for index in range(layers):
        p = f"/bert/encoder/layer.{index}"
        a = f"{p}/attention/self"

        def heads_of(t: str, which: str, perm: list[int]) -> str:
            return node("Transpose", [node("Reshape", [t, split], f"{a}/{which}/Reshape")], f"{a}/{which}/Transpose", perm=perm)

        q = heads_of(linear(x, f"{a}/query", hidden, hidden), "query", [0, 2, 1, 3])
        k = heads_of(linear(x, f"{a}/key", hidden, hidden), "key", [0, 2, 3, 1])
        v = heads_of(linear(x, f"{a}/value", hidden, hidden), "value", [0, 2, 1, 3])
        scores = node("Div", [node("MatMul", [q, k], f"{a}/MatMul"), scale], f"{a}/Div")
        probs = node("Softmax", [node("Add", [scores, mask], f"{a}/Add")], f"{a}/Softmax", axis=-1)
        context = node("Transpose", [node("MatMul", [probs, v], f"{a}/MatMul_1")], f"{a}/Transpose_3", perm=[0, 2, 1, 3])
        context = node("Reshape", [context, merge], f"{a}/Reshape_3")
        attended = linear(context, f"{p}/attention/output/dense", hidden, hidden)
        x = layer_norm(node("Add", [attended, x], f"{p}/attention/output/Add"), f"bert.encoder.layer.{index}.attention.output.LayerNorm")

        inner = linear(x, f"{p}/intermediate/dense", hidden, ffn)
        half = node("Mul", [inner, const(f"{p}/gelu/half", 0.5)], f"{p}/intermediate/intermediate_act_fn/Mul")
        erf = node("Erf", [node("Div", [inner, const(f"{p}/gelu/sqrt2", np.sqrt(2.0))], f"{p}/intermediate/intermediate_act_fn/Div")],
                   f"{p}/intermediate/intermediate_act_fn/Erf")
        one = node("Add", [erf, const(f"{p}/gelu/one", 1.0)], f"{p}/intermediate/intermediate_act_fn/Add")
        gelu = node("Mul", [half, one], f"{p}/intermediate/intermediate_act_fn/Mul_1")
        out = linear(gelu, f"{p}/output/dense", ffn, hidden)
        x = layer_norm(node("Add", [out, x], f"{p}/output/Add"), f"bert.encoder.layer.{index}.output.LayerNorm")

    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="/bert/Identity_last_hidden_state"))
    first = node("Gather", [x, const("/bert/pooler/first", 0, np.int64)], "/bert/pooler/Gather", axis=1)
    pooled = node("Tanh", [gemm(first, "/bert/pooler/dense", hidden, hidden)], "/bert/pooler/activation/Tanh")
    logits = gemm(pooled, "/classifier", hidden, labels)
    nodes.append(helper.make_node("Identity", [logits], ["logits"], name="/Identity_logits"))

    int_input = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"]) for name in ("input_ids", "attention_mask")]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden]),
               helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", labels])]
    return make_model("hf_bert", nodes, int_input, outputs, w, __doc__.splitlines()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--layers", type=int, default=TINY["layers"])
    parser.add_argument("--hidden", type=int, default=TINY["hidden"])
    args = parser.parse_args(argv)
    from onnxsparse.io import save_model

    model = build_hf_bert(layers=args.layers, hidden=args.hidden, ffn=4 * args.hidden)
    save_model(model, args.output, external_data=False)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
