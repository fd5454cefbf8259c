"""``onnxsparse bench``: times both models side by side; bad input is one line."""

import json
import subprocess
import sys

import pytest

from models.build import BUNDLED_SAMPLE

pytestmark = pytest.mark.kernels


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxsparse", *map(str, args)], capture_output=True, text=True)


def test_bench_reports_both_sides(tmp_path):
    compiled = tmp_path / "sample.sparse.onnx"
    assert _cli("compile", BUNDLED_SAMPLE, "-o", compiled).returncode == 0
    result = _cli("bench", BUNDLED_SAMPLE, compiled, "--runs", 3, "--warmup", 1, "--threads", 1, "--batch-size", 2, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["runs"] == 3 and report["threads"] == 1 and report["batch_size"] == 2
    assert report["dense_ms"] > 0 and report["sparse_ms"] > 0
    assert report["speedup"] == pytest.approx(report["dense_ms"] / report["sparse_ms"])


def test_bench_rejects_bad_options(tmp_path):
    result = _cli("bench", BUNDLED_SAMPLE, BUNDLED_SAMPLE, "--runs", 0)
    assert result.returncode == 2 and "--runs" in result.stderr and "Traceback" not in result.stderr
    missing = _cli("bench", BUNDLED_SAMPLE, tmp_path / "missing.onnx")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
