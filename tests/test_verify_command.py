"""``onnxsparse verify``: passes a faithful compiled model, catches a wrong one, rejects bad input."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from models.build import BUNDLED_SAMPLE

pytestmark = pytest.mark.kernels


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxsparse", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("verify") / "sample.sparse.onnx"
    assert _cli("compile", BUNDLED_SAMPLE, "-o", out).returncode == 0
    return out


def test_faithful_model_passes(compiled):
    result = _cli("verify", BUNDLED_SAMPLE, compiled, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and report["outputs"][0]["rel_l2"] < 1e-5


def test_corrupted_values_are_caught(compiled, tmp_path):
    model = onnx.load(str(compiled))
    values = next(t for t in model.graph.initializer if t.name.endswith("values"))
    array = onnx.numpy_helper.to_array(values) * 1.5
    values.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), values.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    result = _cli("verify", BUNDLED_SAMPLE, bad)
    assert result.returncode == 1
    assert "MISMATCH" in result.stdout and "FAILED" in result.stdout


@pytest.mark.parametrize("which", ["original", "compiled"])
def test_bad_input_is_one_line(compiled, tmp_path, which):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model at all")
    args = (garbage, compiled) if which == "original" else (BUNDLED_SAMPLE, garbage)
    result = _cli("verify", *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
