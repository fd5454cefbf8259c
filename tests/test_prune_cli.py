"""``onnxsparse prune`` and ``sensitivity`` from the command line, and prune -> compile -> run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import REPO, make_model

from onnxsparse.format import group_stats, to_rows_k
from onnxsparse.prune import Calibration, PruneOptions, prune_model

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
NET = f"""{HEADER} g (float[N, 8, 6, 6] x) => (float[N, 10] y) {{
    c1 = Conv<kernel_shape=[3, 3], pads=[1, 1, 1, 1]>(x, w1, b1) r1 = Relu(c1)
    c2 = Conv<kernel_shape=[1, 1], group=2>(r1, w2) r2 = Relu(c2)
    p = GlobalAveragePool(r2) f = Flatten(p)
    h = Gemm<transB=1>(f, w3, b3) r3 = Relu(h) m = MatMul(r3, w4) y = Relu(m) }}"""


def net() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = {"w1": (16, 8, 3, 3), "b1": (16,), "w2": (16, 8, 1, 1), "w3": (12, 16), "b3": (12,), "w4": (12, 10)}
    return make_model(NET, **{k: rng.standard_normal(s).astype(np.float32) for k, s in weights.items()})


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "onnxsparse", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=120)


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(net(), path)
    return path


@pytest.fixture
def calib(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.random.default_rng(1).standard_normal((16, 8, 6, 6)).astype(np.float32))
    return path


def test_prune_cli_writes_2of4_model_and_json_report(model_path, calib, tmp_path):
    out = tmp_path / "pruned.onnx"
    result = cli("prune", model_path, "-o", out, "--method", "sparsegpt", "--calib", calib, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [layer["weight"] for layer in report["layers"]] == ["w1", "w2", "w3"]
    assert report["heads"] == ["MatMul_8"]
    assert all(0 < layer["layer_error"] < 1 and layer["compliant_groups"] == 1.0 for layer in report["layers"])
    assert 0 < report["output_error"]["relative_l2"] < 1
    assert "[3/3]" in result.stderr  # progress
    pruned = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
    for name, layout in (("w1", "oihw"), ("w2", "oihw"), ("w3", "nk")):
        assert group_stats(to_rows_k(pruned[name], layout)).share == 1.0
    check = cli("check", out, "--json")
    assert check.returncode == 0


def test_prune_without_calibration_warns(model_path, tmp_path):
    result = cli("prune", model_path, "-o", tmp_path / "p.onnx", "--method", "wanda")
    assert result.returncode == 0, result.stderr
    assert "warning: no --calib given" in result.stderr
    assert "head (last layer before a graph output) is kept dense" in result.stdout


def test_sensitivity_and_max_error(model_path, calib, tmp_path):
    result = cli("sensitivity", model_path, "--calib", calib, "--json", "--prune-head")
    assert result.returncode == 0, result.stderr
    layers = json.loads(result.stdout)["layers"]
    assert len(layers) == 4
    errors = [layer["relative_l2"] for layer in layers]
    assert errors == sorted(errors, reverse=True) and all(0 < e for e in errors)
    budget = (errors[-1] + errors[-2]) / 2  # the least harmful layer fits alone, the others do not alone
    out = tmp_path / "chosen.onnx"
    chosen = cli("prune", model_path, "-o", out, "--calib", calib, "--prune-head", "--max-error", budget, "--json")
    assert chosen.returncode == 0, chosen.stderr
    report = json.loads(chosen.stdout)
    assert 1 <= len(report["layers"]) < 4
    assert len(report["selection"]) == 4  # every layer tried, largest first, kept while the total fits
    assert all(s["kept"] == (s["relative_l2"] <= budget) for s in report["selection"])
    assert [s["params"] for s in report["selection"]] == sorted((s["params"] for s in report["selection"]), reverse=True)
    assert report["output_error_selection"]["relative_l2"] <= budget * 1.0001  # E holds on the data that chose
    assert report["output_error"]["relative_l2"] > 0  # verified on held-out data no choice saw
    assert any("--max-error" in s["reason"] for s in report["skipped"])


def test_sensitivity_plot(model_path, calib, tmp_path):
    # matplotlib comes with the test extras, so the plot is always exercised
    result = cli("sensitivity", model_path, "--calib", calib, "--plot", tmp_path / "s.png", "-q")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "s.png").stat().st_size > 0 and "most harmful first" in result.stdout


def one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_calibration_not_matching_the_model_inputs(model_path, tmp_path):
    cases = {
        "names": ({"image": np.zeros((2, 8, 6, 6), np.float32)}, ["lacks input(s) 'x'", "'image'"]),
        "dtype": ({"x": np.zeros((2, 8, 6, 6), np.float64)}, ["dtype float64", "expects float32"]),
        "rank": ({"x": np.zeros((2, 8, 6), np.float32)}, ["rank 3", "rank 4"]),
        "shape": ({"x": np.zeros((2, 3, 6, 6), np.float32)}, ["expects 8 on axis 1"]),
    }
    for name, (arrays, fragments) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        one_line_error(cli("prune", model_path, "-o", tmp_path / "o.onnx", "--calib", path), str(path), *fragments)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    one_line_error(cli("prune", model_path, "-o", tmp_path / "o.onnx", "--calib", bad), "not a readable .npz")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(cli("sensitivity", model_path, "--calib", empty), "holds no .npz")


def test_bad_inputs_give_one_line(model_path, tmp_path):
    one_line_error(cli("prune", model_path, "-o", tmp_path / "o.onnx", "--method", "obs"), "unknown method 'obs'")
    one_line_error(cli("prune", tmp_path / "missing.onnx", "-o", tmp_path / "o.onnx"), "no such file")
    one_line_error(cli("prune", model_path, "-o", tmp_path / "nowhere" / "o.onnx"), "does not exist")
    one_line_error(cli("prune", model_path, "-o", model_path), "overwrite the input")
    one_line_error(cli("prune", model_path, "-o", tmp_path / "o.onnx", "--n", "4", "--m", "4"), "0 < N < M")
    dense_only = tmp_path / "odd.onnx"
    onnx.save(make_model(f"{HEADER} g (float[N, 6] x) => (float[N, 8] y) {{ h = MatMul(x, w) y = Relu(h) }}",
                         w=np.ones((6, 8), np.float32)), dense_only)
    one_line_error(cli("prune", dense_only, "-o", tmp_path / "o.onnx"), "no eligible layer", "K=6 is not a multiple of 4")
    one_line_error(cli("prune", model_path, "-o", tmp_path / "o.onnx", "--include", "Nothing*"), "no eligible layer")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.kernels
def test_pruned_model_compiles_and_matches_the_pruned_dense_model():
    from onnxsparse import InferenceSession
    from onnxsparse.api import compile_model

    model = net()
    pruned, report = prune_model(model, PruneOptions(method="sparsegpt", prune_head=True), Calibration(model, samples=8))
    assert len(report.layers) == 4
    compiled = compile_model(pruned).model
    ops = [node.op_type for node in compiled.graph.node]
    assert ops.count("Conv2dCompress") == 2 and ops.count("MatMulCompress") == 2
    x = np.random.default_rng(7).standard_normal((3, 8, 6, 6)).astype(np.float32)
    expected = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = InferenceSession(compiled, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_prune_generated_inputs_follow_input_shapes_and_seed(model_path, tmp_path):
    """--input-shapes/--seed shape the generated calibration data; a wrong name or shape is one line."""
    out = tmp_path / "p.onnx"
    ok = cli("prune", model_path, "-o", out, "--method", "wanda", "--input-shapes", "x:[3,8,6,6]", "--seed", "5",
             "--calib-samples", "6", "--json", "-q")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["layers"]
    one_line_error(cli("prune", model_path, "-o", tmp_path / "q.onnx", "--method", "wanda",
                       "--input-shapes", "nope:[1,8,6,6]"), "nope")
    one_line_error(cli("prune", model_path, "-o", tmp_path / "r.onnx", "--method", "wanda",
                       "--input-shapes", "x:[1,8,5,5]"), "x")
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "r.onnx").exists()
