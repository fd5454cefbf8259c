"""The int8 flow end to end: float model -> ``onnxsparse prune`` -> ONNX Runtime's quantizer -> ``onnxsparse compile``.

The float models are the sample generators' (a small transformer and a CNN) with every pruned zero
replaced by a small random value, so that ``onnxsparse prune`` (magnitude) has a dense model to
prune. ``quantize_static`` (QDQ, per-channel and per-tensor, with a small calibration reader) and
``quantize_dynamic`` then quantize the pruned model as a user would, and ``onnxsparse compile``
rewrites its layers into the int8 ops. The compiled model runs through the reference ops
(``reference_ops``) and is compared with ONNX Runtime's run of the quantized model:

- with graph optimizations off, ONNX Runtime runs each op as ONNX defines it (DequantizeLinear, the
  float op, QuantizeLinear): the compiled model gives the same outputs (its integer accumulation
  can move a value that sits on a rounding boundary by one step; measured: identical);
- with ONNX Runtime's default optimizations it fuses the QDQ nodes into its own integer kernels,
  whose outputs differ from its unfused run; the compiled model is then no farther from it than
  the unfused run is.

With the custom-op library (tests marked ``kernels``), the same compiled models run in ONNX Runtime.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static
from reference_ops import run_reference

from onnxsparse.verify import compute_dtype
from models.convnet import build_convnet
from models.transformer import build_tiny_transformer

REPO = Path(__file__).resolve().parent.parent
SAMPLES = {
    "transformer": (build_tiny_transformer, "tokens", (1, 16, 32)),
    "convnet": (build_convnet, "image", (1, 3, 32, 32)),
}


def cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "onnxsparse", *map(str, args)], capture_output=True, text=True, env=env)


def dense_float_model(name: str) -> onnx.ModelProto:
    """The sample with its zeros filled: a dense float model to prune."""
    model = SAMPLES[name][0]("float32")
    rng = np.random.default_rng(0)
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype == np.float32 and values.ndim >= 2:
            filled = np.where(values == 0, rng.standard_normal(values.shape).astype(np.float32) * 0.01, values)
            tensor.CopyFrom(numpy_helper.from_array(filled.astype(np.float32), tensor.name))
    return model


def batches(name: str, count: int, seed: int = 0) -> list[dict]:
    _, input_name, shape = SAMPLES[name]
    rng = np.random.default_rng(seed)
    return [{input_name: rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]


class Calibration(CalibrationDataReader):
    def __init__(self, feeds: list[dict]) -> None:
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


def ort_run(path, feeds: dict, optimized: bool) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def reference_run(path, feeds: dict) -> list[np.ndarray]:
    model = onnx.load(str(path))
    for entry in model.opset_import:  # ONNX's evaluator knows QuantizeLinear/DequantizeLinear from opset 19
        if entry.domain in ("", "ai.onnx"):
            entry.version = max(entry.version, 21)
    return run_reference(model, feeds)


QUANTIZERS = {
    "qdq-per-channel": lambda src, dst, name: quantize_static(
        src, dst, Calibration(batches(name, 8)), quant_format=QuantFormat.QDQ, per_channel=True),
    "qdq-per-tensor": lambda src, dst, name: quantize_static(
        src, dst, Calibration(batches(name, 8)), quant_format=QuantFormat.QDQ, per_channel=False),
    "dynamic": lambda src, dst, name: quantize_dynamic(src, dst, per_channel=True),
}


@pytest.fixture(scope="module")
def pruned_models(tmp_path_factory) -> dict[str, Path]:
    """Each sample, dense, pruned by ``onnxsparse prune`` (once for the module)."""
    folder = tmp_path_factory.mktemp("pruned")
    out = {}
    for name in SAMPLES:
        dense = folder / f"{name}.onnx"
        onnx.save(dense_float_model(name), dense)
        out[name] = folder / f"{name}.pruned.onnx"
        proc = cli("prune", dense, "-o", out[name], "--method", "magnitude", "-q")
        assert proc.returncode == 0, proc.stderr
    return out


def prune_quantize_compile(tmp_path: Path, pruned: Path, name: str, quantizer: str) -> tuple[Path, Path, dict]:
    """The user's flow after pruning; returns (quantized, compiled, compile's JSON report)."""
    quantized = tmp_path / f"{name}.pruned.qdq.onnx"
    QUANTIZERS[quantizer](str(pruned), str(quantized), name)
    compiled = tmp_path / f"{name}.pruned.qdq.sparse.onnx"
    proc = cli("compile", quantized, "-o", compiled, "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    return quantized, compiled, json.loads(proc.stdout)


# Layers each sample keeps dense, and why (the float model's refusals, seen through the quantizer).
EXPECTED_LEFT = {
    "transformer": {"attn/scores/MatMul": "constant", "attn/context/MatMul": "constant",
                    "layers.1.attn.q_proj/MatMul": ""},  # the shared weight: reason depends on the quantizer
    "convnet": {"stem": "C/group = 3 is not a multiple of 4", "depthwise": "C/group = 1 is not a multiple of 4",
                "fc": "groups of 4 int8 values have more than 2 non-zeros"},  # prune leaves the head dense
}


@pytest.mark.parametrize("quantizer", list(QUANTIZERS))
@pytest.mark.parametrize("name", list(SAMPLES))
def test_prune_quantize_compile(tmp_path, pruned_models, name, quantizer):
    quantized, compiled, report = prune_quantize_compile(tmp_path, pruned_models[name], name, quantizer)
    left = {layer["node"]: layer["reason"] for layer in report["layers"] if not layer["rewritten"]}
    for node, reason in left.items():
        expected = next((why for part, why in EXPECTED_LEFT[name].items() if part in node), None)
        assert expected is not None, f"{node} left dense: {reason}"
        assert expected in reason
    rewritten = [layer for layer in report["layers"] if layer["rewritten"]]
    assert len(rewritten) >= (6 if name == "transformer" else 5)
    assert all(layer["dtype"] == "int8" and layer["quant"] for layer in rewritten)
    ops = [node.op_type for node in onnx.load(str(compiled)).graph.node if node.domain == "onnxsparse"]
    assert len(ops) == len(rewritten) and set(ops) <= {"QMatMulCompress", "QConv2dCompress"}
    assert report["weight_bytes_after"] < report["weight_bytes_before"]
    assert compute_dtype(onnx.load(str(quantized))) == "int8"  # verify's tolerance for quantized models

    for feeds in batches(name, 2, seed=99):
        ours = reference_run(compiled, feeds)
        unfused = ort_run(quantized, feeds, optimized=False)
        fused = ort_run(quantized, feeds, optimized=True)
        for o, u, f in zip(ours, unfused, fused):
            scale = np.abs(u).max()
            np.testing.assert_allclose(o, u, rtol=1e-5, atol=1e-5 * scale)
            assert np.abs(o - f).max() <= np.abs(u - f).max() + 1e-5 * scale


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Quantized models"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_compiles_every_layer(tmp_path):
    """The README's flow, run as it is written (from the repository root's sample), but ``verify``:
    it needs the library's int8 kernels (the test marked ``kernels`` below runs it)."""
    code = _readme_example()
    assert "quantize_static" in code and "per_channel=True" in code and "onnxsparse" in code
    script = code.replace('onnxsparse("verify"', 'print("verify"')
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    (tmp_path / "models" / "samples").mkdir(parents=True)
    (tmp_path / "models" / "samples" / "tiny_transformer.onnx").write_bytes(
        (REPO / "models" / "samples" / "tiny_transformer.onnx").read_bytes())
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    compiled = next(tmp_path.glob("*.sparse.onnx"))
    ops = [node.op_type for node in onnx.load(str(compiled)).graph.node if node.domain == "onnxsparse"]
    assert ops.count("QMatMulCompress") >= 10


def _kernel_ops_missing() -> str | None:
    """Why the library at hand cannot run the int8 ops (None: it can)."""
    import onnxsparse

    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("QMatMulCompress", ["a", "s", "", "v", "i", "s"], ["y"], domain="onnxsparse")], "g",
        [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.UINT8, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(np.float32(1), "s"), numpy_helper.from_array(np.zeros((1, 2), np.int8), "v"),
         numpy_helper.from_array(np.zeros((1, 1), np.uint8), "i")]),
        opset_imports=[onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("onnxsparse", 1)], ir_version=9)
    try:
        onnxsparse.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - the reason to skip
        return f"the custom-op library has no int8 kernels: {str(exc).splitlines()[0][:200]}"
    return None


@pytest.mark.kernels
@pytest.mark.parametrize("quantizer", list(QUANTIZERS))
@pytest.mark.parametrize("name", list(SAMPLES))
def test_compiled_int8_model_in_onnxruntime(tmp_path, pruned_models, name, quantizer):
    """The compiled model on the library's int8 kernels against ONNX Runtime's own run of the
    quantized model, both with ONNX Runtime's default optimizations: within one quantization step."""
    import onnxsparse

    missing = _kernel_ops_missing()
    if missing:
        pytest.skip(missing)
    quantized, compiled, _ = prune_quantize_compile(tmp_path, pruned_models[name], name, quantizer)
    session = onnxsparse.InferenceSession(str(compiled), providers=["CPUExecutionProvider"])
    for feeds in batches(name, 2, seed=7):
        ours = session.run(None, feeds)
        theirs = ort_run(quantized, feeds, optimized=True)
        unfused = ort_run(quantized, feeds, optimized=False)
        for o, f, u in zip(ours, theirs, unfused):
            scale = np.abs(f).max()
            # ONNX Runtime's own fused and unfused runs bound how far two exact int8 executions may drift.
            assert np.abs(o - f).max() <= max(np.abs(u - f).max(), 1e-5 * scale) + 1e-6 * scale


@pytest.mark.kernels
def test_readme_example_verifies(tmp_path):
    """The README's flow as written, ``onnxsparse verify`` included, on the library's int8 kernels."""
    missing = _kernel_ops_missing()
    if missing:
        pytest.skip(missing)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    (tmp_path / "models" / "samples").mkdir(parents=True)
    (tmp_path / "models" / "samples" / "tiny_transformer.onnx").write_bytes(
        (REPO / "models" / "samples" / "tiny_transformer.onnx").read_bytes())
    proc = subprocess.run([sys.executable, "-c", _readme_example()], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verified: outputs match" in proc.stdout
    assert "reference: ONNX Runtime's" in proc.stdout  # which int8 kernels the reference ran on
    # 7-bit weights (reduce_range): no pair of uint8 x int8 products can leave int16, so ONNX
    # Runtime's reference is exact on x86 CPUs without VNNI too (where its kernels saturate pair sums).
    quantized = onnx.load(str(tmp_path / "pruned.qdq.onnx"))
    weights = [numpy_helper.to_array(t) for t in quantized.graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert len(weights) >= 10
    assert 2 * 255 * max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 32767


def _exact_entry_loads(path) -> bool:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.add_session_config_entry("session.x64quantprecision", "1")
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - ONNX Runtime refuses some QDQ models with the entry
        return False
    return True


@pytest.mark.kernels
@pytest.mark.parametrize("name", list(SAMPLES))
def test_verify_asks_for_exact_int8_kernels(tmp_path, pruned_models, name, caplog, monkeypatch):
    """verify runs both sides with ONNX Runtime's exact int8 kernels where it accepts them, and
    otherwise runs both without and warns on a CPU whose uint8 x int8 kernels saturate."""
    import logging

    from onnxsparse import verify as verify_module

    missing = _kernel_ops_missing()
    if missing:
        pytest.skip(missing)
    quantized, compiled, _ = prune_quantize_compile(tmp_path, pruned_models[name], name, "qdq-per-channel")
    monkeypatch.setattr(verify_module, "int8_pairs_saturate", lambda *a, **k: True)
    with caplog.at_level(logging.INFO, logger="onnxsparse.verify"):
        checks = verify_module.verify(str(quantized), str(compiled))
    assert all(c.passed for c in checks), checks
    assert checks[0].compute_dtype == "int8"
    messages = [r.getMessage() for r in caplog.records]
    if _exact_entry_loads(quantized):
        assert any("both models ran with session.x64quantprecision=1" in m for m in messages), messages
        assert {c.reference for c in checks} == {"exact int8 kernels"}
    else:
        assert any("refused session.x64quantprecision=1" in m and "no VNNI" in m for m in messages), messages
        assert {c.reference for c in checks} == {"default int8 kernels"}


@pytest.mark.kernels
def test_verify_holds_int8_models_to_onnx_runtimes_own_spread(tmp_path, pruned_models):
    """An int8 model's atol is at least how far ONNX Runtime's integer and float runs of the original
    differ (a rounding-boundary step carries through the layers; the model defines no more), and a
    compiled model with one layer's weights wrong still fails."""
    from onnxsparse import verify as verify_module

    missing = _kernel_ops_missing()
    if missing:
        pytest.skip(missing)
    quantized, compiled, _ = prune_quantize_compile(tmp_path, pruned_models["transformer"], "transformer",
                                                    "qdq-per-channel")
    checks = verify_module.verify(str(quantized), str(compiled))
    assert all(c.passed for c in checks)
    for c in checks:
        assert c.int8_spread > 0 and c.atol >= c.int8_spread
    # The spread is what ONNX Runtime's two runs of the original differ by, measured here directly.
    feeds = next(iter(verify_module.Calibration(onnx.load(str(quantized)), None, batch_size=1, samples=1, seed=0)))
    fused, unfused = ort_run(quantized, feeds, optimized=True), ort_run(quantized, feeds, optimized=False)
    assert max(c.int8_spread for c in checks) >= np.abs(fused[0] - unfused[0]).max() > 0
    broken = onnx.load(str(compiled))
    node = next(n for n in broken.graph.node if n.op_type == "QMatMulCompress")
    values = next(t for t in broken.graph.initializer if t.name == node.input[3])
    array = numpy_helper.to_array(values)
    values.CopyFrom(numpy_helper.from_array((-array.astype(np.int16)).clip(-127, 127).astype(np.int8), values.name))
    onnx.save(broken, str(tmp_path / "broken.onnx"))
    assert not all(c.passed for c in verify_module.verify(str(quantized), str(tmp_path / "broken.onnx")))


def test_int8_pairs_saturate_on_x86_without_vnni():
    from onnxsparse.verify import int8_pairs_saturate

    assert int8_pairs_saturate(frozenset({"avx2", "fma"}), "x86_64")
    assert int8_pairs_saturate(frozenset({"avx512f", "avx512bw"}), "x86_64")  # AVX-512 without VNNI
    assert not int8_pairs_saturate(frozenset({"avx512f", "avx512_vnni"}), "x86_64")
    assert not int8_pairs_saturate(frozenset({"avx2", "avx_vnni"}), "x86_64")
    assert not int8_pairs_saturate(frozenset(), "aarch64")
