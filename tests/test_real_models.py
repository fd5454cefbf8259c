"""Models as third parties write them: a Hugging Face BERT (the generator in ``models/hf_bert.py``
always, and a real ``transformers`` export when it is installed), QDQ-quantized weights, and
``check`` on a model that is already compiled.

BERT: ``prune -> compile -> verify`` must prune every linear layer except the real head (the
classifier), compile every pruned layer, and give the pruned model's outputs back.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import HEAD, make_model, sparse_weight

from models.hf_bert import build_hf_bert, linear_names
from onnxsparse.api import check_model, compile_model
from onnxsparse.compiler import ModelGraph
from onnxsparse.prune import Calibration, PruneOptions, prune_model
from onnxsparse.prune.layers import scan_layers

HEAD_NODE = "/classifier/Gemm"


def bert_inputs(path, batch: int = 8, seq: int = 12, vocab: int = 128) -> str:
    rng = np.random.default_rng(3)
    mask = np.ones((batch, seq), np.int64)
    mask[::2, seq - 3:] = 0  # padded sequences, as a tokenizer gives them
    np.savez(path, input_ids=rng.integers(0, vocab, (batch, seq)).astype(np.int64), attention_mask=mask)
    return str(path)


def prune_compile_verify(model: onnx.ModelProto, inputs: str, prune_head: bool = False):
    """The user's path: magnitude 2:4 pruning, compile, then verify compiled against pruned."""
    from onnxsparse.verify import verify

    calibration = Calibration(model, inputs, batch_size=4, samples=8)
    pruned, report = prune_model(model, PruneOptions(method="magnitude", prune_head=prune_head), calibration)
    compiled = compile_model(pruned)
    checks = verify(pruned, compiled.model, inputs=inputs, samples=8, batch_size=4)
    return report, compiled, checks


def pruned_nodes(report) -> set[str]:
    return {use for layer in report.layers for use in layer.name.split("+")}


def linear_layers(model: onnx.ModelProto) -> list[str]:
    """MatMul/Gemm nodes with a constant weight (the linear layers, not the attention products)."""
    constants = {tensor.name for tensor in model.graph.initializer}
    return [node.name for node in model.graph.node if node.op_type in ("MatMul", "Gemm") and node.input[1] in constants]


# --- the generator: always in CI ------------------------------------------------------------------


def test_generator_has_the_layers_of_a_bert_export():
    model = build_hf_bert(layers=2)
    assert linear_layers(model) == linear_names(2)
    ops = {node.op_type for node in model.graph.node}
    assert {"Gather", "LayerNormalization", "Softmax", "Erf", "Tanh", "Gemm", "Range"} <= ops
    assert [value.name for value in model.graph.output] == ["last_hidden_state", "logits"]


@pytest.mark.kernels
def test_generator_bert_prunes_compiles_and_verifies_with_every_layer(tmp_path):
    """Everything pruned (``prune_head``): every linear layer compiles and the outputs match."""
    model = build_hf_bert(layers=2)
    report, compiled, checks = prune_compile_verify(model, bert_inputs(tmp_path / "in.npz"), prune_head=True)
    assert pruned_nodes(report) == set(linear_names(2))
    assert {layer.record.node for layer in compiled.rewritten} == set(linear_names(2))
    assert compiled.weight_bytes_after < compiled.weight_bytes_before
    assert all(check.passed for check in checks), [(c.name, c.rel_l2) for c in checks]


@pytest.mark.kernels
def test_generator_bert_prunes_all_but_the_real_head(tmp_path):
    model = build_hf_bert(layers=2)
    report, compiled, checks = prune_compile_verify(model, bert_inputs(tmp_path / "in.npz"))
    expected = set(linear_names(2)) - {HEAD_NODE}
    assert report.heads == [HEAD_NODE]
    assert pruned_nodes(report) == expected
    assert {layer.record.node for layer in compiled.rewritten} == expected
    assert all(check.passed for check in checks)


def test_generator_bert_head_is_only_the_classifier():
    """Head detection does not stop at the projections behind the residual Adds (issue 13 item 9)."""
    scan = scan_layers(build_hf_bert(layers=2))
    assert set(scan.heads) == {HEAD_NODE}
    assert [layer.uses[0].node for layer in scan.layers] == linear_names(2)[:-1]


# --- a real transformers export: only where transformers is installed -------------------------


def export_transformers_bert(path, dynamo: bool) -> onnx.ModelProto:
    torch = pytest.importorskip("torch", reason="torch is not installed")
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (test-only dependency)")
    config = transformers.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=256, max_position_embeddings=64, num_labels=2)
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(config).eval()

    class Both(torch.nn.Module):
        """logits and the last hidden state, as a feature-extraction + classification export gives."""

        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            return out.hidden_states[-1], out.logits

    ids = torch.randint(0, 128, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.int64)
    try:
        torch.onnx.export(Both(), (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state", "logits"], opset_version=17, dynamo=dynamo,
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
    except Exception as exc:  # noqa: BLE001 - an exporter that cannot run here is a skip, with its reason
        pytest.skip(f"torch.onnx.export (dynamo={dynamo}) failed here: {str(exc).splitlines()[0][:200]}")
    return onnx.load(str(path))


@pytest.mark.kernels
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_transformers_bert_prunes_compiles_and_verifies(tmp_path, dynamo):
    model = export_transformers_bert(tmp_path / "bert.onnx", dynamo)
    linear = linear_layers(ModelGraph(model).to_model())
    assert len(linear) >= 13  # 12 encoder projections (2 layers), pooler, classifier
    report, compiled, checks = prune_compile_verify(model, bert_inputs(tmp_path / "in.npz"))
    classifier = linear[-1]
    assert report.heads == [classifier]  # the last linear layer: the classifier
    assert pruned_nodes(report) == set(linear) - {classifier}  # every linear layer but the real head
    assert {layer.record.node for layer in compiled.rewritten} == set(linear) - {classifier}
    assert all(check.passed for check in checks), [(c.name, c.rel_l2) for c in checks]


# --- QDQ: quantized weights say what to do --------------------------------------------------------


def qdq_model() -> onnx.ModelProto:
    weight = sparse_weight((8, 4), "kn")
    scale = np.float32(np.abs(weight).max() / 127)
    q = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
    return make_model(
        f"""{HEAD} g (float[2,8] x) => (float[2,4] y) {{
        w = DequantizeLinear(Wq, s, z)
        y = MatMul(x, w) }}""",
        Wq=q, s=np.array(scale, np.float32), z=np.array(0, np.int8),
    )


def test_qdq_weight_reason_says_to_prune_the_float_model_first():
    # The pruner says so; check and compile describe the layer with the int8 rules (weight-only int8
    # here: a float activation), see tests/test_int8_compile.py.
    scan = scan_layers(qdq_model())
    assert len(scan.skipped) == 1
    assert "quantized (computed by DequantizeLinear)" in scan.skipped[0].reason
    assert "prune the float model before quantizing it" in scan.skipped[0].reason
    (layer,) = check_model(qdq_model()).layers
    assert not layer.eligible and layer.quant == "QDQ"
    assert "weight-only int8 is not supported" in layer.reason


# --- check on a compiled model --------------------------------------------------------------------


def conv_and_matmul_model() -> onnx.ModelProto:
    return make_model(
        f"""{HEAD} g (float[1,8,6,6] x, float[2,8] a) => (float[1,4,4,4] y, float[2,4] b) {{
        y = Conv(x, W)
        b = MatMul(a, V) }}""",
        W=sparse_weight((4, 8, 3, 3), "oihw"), V=sparse_weight((8, 4), "kn"),
    )


def test_check_reports_compiled_layers():
    compiled = compile_model(conv_and_matmul_model()).model
    report = check_model(compiled)
    assert report.layers == []
    assert report.compiled == {"Conv2dCompress": 1, "MatMulCompress": 1}
    assert report.compiled_summary() == "2 layers already compiled (1 Conv2dCompress, 1 MatMulCompress)"
    data = json.loads(json.dumps(report.to_dict()))
    assert data["compiled"] == {"Conv2dCompress": 1, "MatMulCompress": 1} and data["compiled_total"] == 2


def test_check_on_a_partly_compiled_model_reports_both():
    model = conv_and_matmul_model()
    compiled = compile_model(model, policy=lambda record: "kept" if record.op == "MatMul" else None).model
    report = check_model(compiled)
    assert [(layer.op, layer.eligible) for layer in report.layers] == [("MatMul", True)]
    assert report.compiled_summary() == "1 layer already compiled (Conv2dCompress)"


def test_check_cli_text_and_json_name_the_compiled_layers(tmp_path, capsys):
    from onnxsparse.cli import main

    path = tmp_path / "compiled.onnx"
    onnx.save(compile_model(conv_and_matmul_model()).model, path)
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 layers already compiled (1 Conv2dCompress, 1 MatMulCompress)" in out
    assert "no Conv, MatMul or Gemm layers" not in out
    assert main(["check", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["compiled_total"] == 2
