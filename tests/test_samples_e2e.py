"""Every sample model, compiled, matches the original dense model in ONNX Runtime (CPU).

The original runs on ONNX Runtime's own kernels, the compiled model with the onnxsparse library;
fp16 models are compared within fp16's own error (both sides round every op's output to fp16).
"""

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models import build_convnet, build_mlp, build_tiny_transformer, build_transformer, save_external
from onnxsparse import InferenceSession
from onnxsparse.api import compile_model
from onnxsparse.verify import verify

pytestmark = pytest.mark.kernels

BUILDERS = {
    "transformer": build_transformer,
    "tiny_transformer": build_tiny_transformer,
    "convnet": build_convnet,
    "mlp": build_mlp,
}
# (layers rewritten, layers left dense) per model
EXPECTED = {
    "transformer": (12, 4),  # left: 2 attention score + 2 context MatMuls (activations, not weights)
    "tiny_transformer": (12, 4),
    "convnet": (6, 2),  # left: the 3-channel stem and the depthwise conv
    "mlp": (3, 0),
}
RTOL = {"float32": 1e-5, "float16": 2e-2}


def _feeds(model, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in model.graph.input:
        dims = [d.dim_value if d.dim_value > 0 else (batch if i == 0 else 8) for i, d in enumerate(info.type.tensor_type.shape.dim)]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        feeds[info.name] = rng.standard_normal(dims).astype(dtype)
    return feeds


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_compiled_sample_matches_original(name, dtype):
    original = BUILDERS[name](dtype=dtype)
    result = compile_model(original)
    assert (len(result.rewritten), len(result.left)) == EXPECTED[name]
    assert all(layer.reason for layer in result.left), "every layer left dense has a reason"
    assert result.weight_bytes_after < 0.75 * result.weight_bytes_before or name == "convnet"

    feeds = _feeds(original)
    dense = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"])
    sparse = InferenceSession(result.model, providers=["CPUExecutionProvider"])
    for expected, actual in zip(dense.run(None, feeds), sparse.run(None, feeds)):
        expected = expected.astype(np.float64)
        error = np.linalg.norm(actual.astype(np.float64) - expected) / np.linalg.norm(expected)
        assert error < RTOL[dtype], f"relative L2 error {error:.3g}"


def test_verify_api_on_compiled_convnet():
    original = build_convnet()
    checks = verify(original, compile_model(original).model, samples=2, batch_size=3)
    assert all(check.passed for check in checks)


def test_external_data_in_and_out(tmp_path):
    source = tmp_path / "mlp.onnx"
    save_external(source)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    out = tmp_path / "out" / "mlp.sparse.onnx"
    out.parent.mkdir()
    cli = subprocess.run(
        [sys.executable, "-m", "onnxsparse", "compile", str(source), "-o", str(out)], capture_output=True, text=True
    )
    assert cli.returncode == 0, cli.stderr
    assert (out.parent / "mlp.sparse.onnx.data").is_file(), "external data in, external data out"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before, "input untouched"
    feeds = _feeds(onnx.load(str(source)))
    expected = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    actual = InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
