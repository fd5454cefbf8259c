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


def test_bench_reports_spread_and_kernel_path(tmp_path):
    compiled = tmp_path / "sample.sparse.onnx"
    assert _cli("compile", BUNDLED_SAMPLE, "-o", compiled).returncode == 0
    result = _cli("bench", BUNDLED_SAMPLE, compiled, "--runs", 3, "--warmup", 0, "--threads", 1, "--json")
    report = json.loads(result.stdout)
    assert report["speedup_low"] <= report["speedup_high"]
    assert report["execution_provider"] == "CPUExecutionProvider"
    assert report["cpu_isa"] in ("avx512", "avx2", "portable")
    assert any("only 3 runs" in w for w in report["warnings"])
    text = _cli("bench", BUNDLED_SAMPLE, compiled, "--runs", 3, "--warmup", 0, "--threads", 1)
    assert "kernel path: CPUExecutionProvider, CPU kernels" in text.stdout
    assert "warning:" in text.stderr and "too noisy to trust" in text.stderr


def test_spread_warnings_flag_a_wide_spread():
    from onnxsparse.bench import BenchResult, spread_warnings

    steady = BenchResult("cpu", 1, 1, 20, 10.0, 5.0, 0.1, 0.1, 1.98, 2.02)
    assert spread_warnings(steady, [2.0] * 20) == []
    noisy = BenchResult("cpu", 1, 1, 20, 10.0, 5.0, 4.0, 0.1, 0.28, 2.85)
    warnings = spread_warnings(noisy, [0.28, 2.85] * 10)
    assert any("dense times vary" in w for w in warnings) and any("faster dense" in w for w in warnings)


def test_bench_batch_size_zero_is_one_line():
    result = _cli("bench", BUNDLED_SAMPLE, BUNDLED_SAMPLE, "--batch-size", 0)
    assert result.returncode == 2 and "--batch-size" in result.stderr and "internal error" not in result.stderr
