"""The int8 flow on a third-party export: a ``transformers`` BERT exported by torch.onnx.

A small random-init ``BertModel`` (hidden 128, 2 layers, 4 heads, FFN 512) is exported with the
helper of benchmarks/e2e_transformers_cuda.py (the dynamo exporter, TorchScript where it fails), in
fp32; then the user's flow: ``onnxsparse prune --method magnitude`` (every eligible layer),
ONNX Runtime's quantizer (``quantize_static`` QDQ per-channel with a small calibration reader, and
``quantize_dynamic``), ``onnxsparse compile``. Checked:

- every linear layer of the encoder (6 per layer: query, key, value, attention output, FFN in and
  out) becomes a ``QMatMulCompress``; the layers left dense are the attention products (both inputs
  are activations), each with its reason;
- on the library's int8 kernels, the compiled model's output is as close to ONNX Runtime's own
  (optimized) run of the quantized model as ONNX Runtime's unoptimized run of it is (the rule of
  tests/test_int8_flow.py: two exact int8 executions drift apart by no more than that);
- ``onnxsparse verify quantized compiled`` passes;
- the TorchScript export's pooler (``Gemm``, transB=1, its zero bias shared through an Identity) compiles.

Skipped only without torch or transformers (CI installs both, see .ci/run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import REPO, library_available

torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'onnxsparse[test-real]')")
transformers = pytest.importorskip("transformers",
                                   reason="transformers is not installed (pip install 'onnxsparse[test-real]')")

from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static  # noqa: E402

from benchmarks.e2e_transformers_cuda import _export, _LastHidden  # noqa: E402

LAYERS, HIDDEN, HEADS, FFN, VOCAB, SEQ = 2, 128, 4, 512, 256, 16
LINEAR_PER_LAYER = 6  # query, key, value, attention output, FFN in, FFN out
ATTENTION_PRODUCTS_PER_LAYER = 2  # Q.K^T and softmax.V: no constant weight


def cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "onnxsparse", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO)


def token_batches(count: int, seed: int, batch: int = 2) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"input_ids": rng.integers(0, VOCAB, (batch, SEQ)).astype(np.int64)} for _ in range(count)]


class Calibration(CalibrationDataReader):
    def __init__(self, feeds: list[dict]) -> None:
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


QUANTIZERS = {
    "qdq-per-channel": lambda src, dst: quantize_static(src, dst, Calibration(token_batches(4, seed=1)),
                                                        quant_format=QuantFormat.QDQ, per_channel=True),
    "dynamic": lambda src, dst: quantize_dynamic(src, dst, per_channel=True),
}


@pytest.fixture(scope="module")
def pruned_bert(tmp_path_factory) -> Path:
    """The fp32 export, pruned by ``onnxsparse prune`` (once for the module)."""
    folder = tmp_path_factory.mktemp("bert_int8")
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                     num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=64)
    torch.manual_seed(0)
    net = transformers.BertModel(config, add_pooling_layer=False).eval()
    dense = folder / "bert.onnx"
    try:
        _export(_LastHidden.wrap(net), torch.zeros((2, SEQ), dtype=torch.int64), "input_ids", {0: "B"}, dense)
    except RuntimeError as exc:  # neither exporter runs here: a skip with the reason
        pytest.skip(str(exc)[:300])
    pruned = folder / "bert.pruned.onnx"
    proc = cli("prune", dense, "-o", pruned, "--method", "magnitude", "-q")
    assert proc.returncode == 0, proc.stderr
    return pruned


@pytest.fixture(scope="module", params=list(QUANTIZERS))
def compiled_bert(request, pruned_bert) -> tuple[Path, Path, dict]:
    """(quantized, compiled, compile's JSON report) for each quantizer."""
    quantized = pruned_bert.with_name(f"bert.pruned.{request.param}.onnx")
    QUANTIZERS[request.param](str(pruned_bert), str(quantized))
    compiled = quantized.with_suffix(".sparse.onnx")
    proc = cli("compile", quantized, "-o", compiled, "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    return quantized, compiled, json.loads(proc.stdout)


def test_encoder_linear_layers_become_qmatmulcompress(compiled_bert):
    quantized, compiled, report = compiled_bert
    left = [(layer["node"], layer["reason"]) for layer in report["layers"] if not layer["rewritten"]]
    for node, reason in left:
        print(f"left dense: {node}: {reason}")
    rewritten = [layer for layer in report["layers"] if layer["rewritten"]]
    assert len(rewritten) == LAYERS * LINEAR_PER_LAYER, [layer["node"] for layer in rewritten]
    assert all(layer["dtype"] == "int8" and layer["quant"] for layer in rewritten)
    # Every refusal has its reason, and only the attention products (activation x activation) are left.
    assert len(left) == LAYERS * ATTENTION_PRODUCTS_PER_LAYER, left
    for node, reason in left:
        assert reason, node
        assert "activation quantized at run time" in reason or "so it is not constant" in reason, (node, reason)
    ops = [node.op_type for node in onnx.load(str(compiled)).graph.node if node.domain == "onnxsparse"]
    assert ops == ["QMatMulCompress"] * LAYERS * LINEAR_PER_LAYER
    assert report["weight_bytes_after"] < report["weight_bytes_before"]


def _ort_run(path: Path, feeds: dict, optimized: bool) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)


needs_library = pytest.mark.skipif(not library_available(), reason="the onnxsparse custom-op library is not built")


@pytest.mark.kernels
@needs_library
def test_compiled_bert_matches_onnxruntime_on_the_quantized_model(compiled_bert):
    import onnxsparse

    quantized, compiled, _ = compiled_bert
    session = onnxsparse.InferenceSession(str(compiled), providers=["CPUExecutionProvider"])
    for feeds in token_batches(2, seed=7) + token_batches(1, seed=8, batch=1):
        ours = session.run(None, feeds)
        theirs = _ort_run(quantized, feeds, optimized=True)
        unfused = _ort_run(quantized, feeds, optimized=False)
        for o, f, u in zip(ours, theirs, unfused):
            assert o.shape == f.shape and np.isfinite(o).all()
            scale = np.abs(f).max()
            assert np.abs(o - f).max() <= max(np.abs(u - f).max(), 1e-5 * scale) + 1e-6 * scale


@pytest.mark.kernels
@needs_library
def test_verify_passes(compiled_bert):
    quantized, compiled, _ = compiled_bert
    proc = cli("verify", quantized, compiled, "--int-range", 0, VOCAB, "--batch-size", 2,
               "--input-shapes", f"input_ids:[2,{SEQ}]")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verified: outputs match" in proc.stdout


def test_pooler_gemm_with_a_shared_zero_bias(tmp_path):
    """The TorchScript exporter writes the pooler as ``Gemm(transB=1)`` and shares equal constants: a
    random-init model's zero pooler bias is read through an Identity of a LayerNorm's zero bias, which
    the quantizer dequantizes (int32, at that LayerNorm's scale) before the Identity. Pruned with the
    head (``--prune-head``), the QDQ Gemm compiles with that bias requantized, and matches ONNX Runtime."""
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=64)
    torch.manual_seed(0)
    net = transformers.BertModel(config).eval()

    class Both(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, input_ids):
            out = self.net(input_ids=input_ids)
            return out.last_hidden_state, out.pooler_output

    dense, pruned, quantized = tmp_path / "bert.onnx", tmp_path / "bert.pruned.onnx", tmp_path / "bert.qdq.onnx"
    with torch.no_grad():
        torch.onnx.export(Both(), (torch.zeros((2, SEQ), dtype=torch.int64),), str(dense), input_names=["input_ids"],
                          output_names=["Y", "P"], dynamic_axes={"input_ids": {0: "B"}}, opset_version=17, dynamo=False)
    gemm = next(node for node in onnx.load(str(dense)).graph.node if node.op_type == "Gemm")
    proc = cli("prune", dense, "-o", pruned, "--method", "magnitude", "--prune-head", "-q")
    assert proc.returncode == 0, proc.stderr
    QUANTIZERS["qdq-per-channel"](str(pruned), str(quantized))
    nodes = onnx.load(str(quantized)).graph.node
    producers = {out: node for node in nodes for out in node.output}
    bias = next(node for node in nodes if node.name == gemm.name).input[2]
    assert producers[bias].op_type == "Identity"  # the case this test is for: the exporter shared the bias
    proc = cli("compile", quantized, "-o", tmp_path / "bert.sparse.onnx", "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    pooler = next(layer for layer in report["layers"] if layer["node"] == gemm.name)
    assert pooler["rewritten"], pooler["reason"]
    assert sum(layer["rewritten"] for layer in report["layers"]) == LINEAR_PER_LAYER + 1
    if library_available():
        import onnxsparse

        session = onnxsparse.InferenceSession(str(tmp_path / "bert.sparse.onnx"), providers=["CPUExecutionProvider"])
        for feeds in token_batches(2, seed=5):
            theirs, unfused = _ort_run(quantized, feeds, optimized=True), _ort_run(quantized, feeds, optimized=False)
            for o, f, u in zip(session.run(None, feeds), theirs, unfused):
                scale = np.abs(f).max()
                assert np.abs(o - f).max() <= max(np.abs(u - f).max(), 1e-5 * scale) + 1e-6 * scale
