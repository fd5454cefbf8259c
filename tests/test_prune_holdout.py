"""Held-out estimates, --max-error as a promise, --method auto, magnitude without data, -1 dims."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxsparse.errors import OnnxSparseError
from onnxsparse.prune import Calibration, PruneOptions, prune_model
from onnxsparse.prune.evaluate import ReferenceOutputs
from onnxsparse.prune.holdout import selection_parts, split_calibration


def mlp(dims=(-1, 32), seed=0, widths=(32, 64, 32, 16)) -> onnx.ModelProto:
    """x -> MatMul -> Relu -> MatMul -> Relu -> MatMul -> y; the input's dims as given (-1 allowed)."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (k, n) in enumerate(zip(widths, widths[1:])):
        inits.append(numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"fc{i}"))
        prev = f"m{i}"
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"], name=f"relu{i}"))
            prev = f"r{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(dims))],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [dims[0], widths[-1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def correlated(path, rows=256, k=32, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 4)) @ rng.standard_normal((4, k)) + 0.1 * rng.standard_normal((rows, k))
    np.savez(path, x=x.astype(np.float32))
    return path


def cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxsparse", *map(str, args)], capture_output=True, text=True)


# --- -1 dimensions (issue 13 item 12) ------------------------------------------------------------


def test_minus_one_dims_prune_with_random_inputs():
    model = mlp(dims=(-1, 32))
    pruned, report = prune_model(model, PruneOptions(method="wanda", prune_head=True), Calibration(model, samples=8))
    assert len(report.layers) == 3 and report.output_error is not None


def test_minus_one_batch_axis_accepts_calib(tmp_path):
    model = mlp(dims=(-1, 32))
    onnx.save(model, tmp_path / "m.onnx")
    result = cli("prune", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--method", "sparsegpt",
                 "--calib", correlated(tmp_path / "c.npz", rows=20), "--json", "-q")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o.onnx").exists()


# --- magnitude needs no data (issue 13 item 19) ---------------------------------------------------


def test_magnitude_captures_nothing(monkeypatch):
    import onnxsparse.prune.pruner as pruner
    import onnxsparse.prune.sensitivity as sensitivity

    def refuse(*args, **kwargs):
        raise AssertionError("magnitude captured layer inputs")

    monkeypatch.setattr(pruner, "capture", refuse)
    monkeypatch.setattr(sensitivity, "capture", refuse)
    model = mlp()
    _, report = prune_model(model, PruneOptions(method="magnitude", prune_head=True), None)
    assert len(report.layers) == 3 and report.output_error is None
    _, report = prune_model(model, PruneOptions(method="magnitude", prune_head=True, max_error=10.0),
                            Calibration(model, samples=8))
    assert len(report.layers) == 3 and report.output_error is not None


def test_magnitude_cli_does_not_warn_about_missing_calibration(tmp_path):
    onnx.save(mlp(dims=(4, 32)), tmp_path / "m.onnx")
    result = cli("prune", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--prune-head")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr and "calib" not in result.stderr
    wanda = cli("prune", tmp_path / "m.onnx", "-o", tmp_path / "w.onnx", "--method", "wanda", "-q")
    assert wanda.returncode == 0 and "no --calib given" in wanda.stderr


# --- held-out data (issue 20 item 1) ---------------------------------------------------------------


def test_split_is_disjoint_and_covers_the_calibration(tmp_path):
    model = mlp()
    calib = Calibration(model, correlated(tmp_path / "c.npz", rows=64), batch_size=8)
    split = split_calibration(calib)
    fit = np.concatenate([b["x"] for b in split.fit])
    held = np.concatenate([b["x"] for b in split.held])
    assert split.disjoint and len(fit) == 48 and len(held) == 16
    assert not {r.tobytes() for r in fit} & {r.tobytes() for r in held}
    one = split_calibration(Calibration(model, tmp_path / "c.npz", batch_size=64))
    assert sum(len(b["x"]) for b in one.fit) == 48 and sum(len(b["x"]) for b in one.held) == 16


def test_report_shows_held_out_and_fit_errors(tmp_path):
    """SparseGPT fits the calibration data: its fit error is below its held-out error."""
    model = mlp()
    calib = Calibration(model, correlated(tmp_path / "c.npz", rows=40), batch_size=8)
    _, report = prune_model(model, PruneOptions(method="sparsegpt", prune_head=True), calib)
    assert report.output_error_fit.rel_l2 < report.output_error.rel_l2
    assert "held-out" in report.holdout
    data = report.to_json()
    assert data["output_error_fit"] and data["output_error"] and data["holdout"]


def test_holdout_dir_is_used_for_errors(tmp_path):
    model = mlp()
    correlated(tmp_path / "c.npz", rows=64, seed=1)
    (tmp_path / "h").mkdir()
    correlated(tmp_path / "h" / "h.npz", rows=16, seed=5)
    calib, held = Calibration(model, tmp_path / "c.npz"), Calibration(model, tmp_path / "h")
    pruned, report = prune_model(model, PruneOptions(method="wanda", prune_head=True), calib, holdout=held)
    expected = ReferenceOutputs(model, held).error_of_model(pruned)
    assert report.output_error.rel_l2 == pytest.approx(expected.rel_l2, rel=1e-6)


# --- --max-error as a promise (issue 20 item 2) ----------------------------------------------------


@pytest.mark.parametrize("method", ["magnitude", "sparsegpt", "auto"])
@pytest.mark.parametrize("budget", [0.05, 0.15, 0.3])
def test_max_error_is_never_exceeded_on_held_out_data(tmp_path, method, budget):
    model = mlp(widths=(32, 64, 64, 32, 16))
    calib = Calibration(model, correlated(tmp_path / "c.npz", rows=96), batch_size=16)
    split = split_calibration(calib)
    try:
        pruned, report = prune_model(model, PruneOptions(method=method, prune_head=True, max_error=budget), calib)
    except OnnxSparseError as exc:
        assert "closest is" in str(exc)
        return
    parts = selection_parts(split.held)
    measured = ReferenceOutputs(model, parts.select).error_of_model(pruned)
    assert measured.rel_l2 <= budget
    assert report.output_error_selection.rel_l2 == pytest.approx(measured.rel_l2, rel=1e-5)
    verified = ReferenceOutputs(model, parts.verify).error_of_model(pruned)
    assert report.output_error.rel_l2 == pytest.approx(verified.rel_l2, rel=1e-5)
    assert verified.rel_l2 <= budget  # the promise holds on the verification data too


def unlike_halves(tmp_path):
    """A held-out directory whose selection batches (every other one) are like the calibration data
    and whose verification batches are not: what the greedy chose can exceed E on the latter."""
    like = np.load(correlated(tmp_path / "like.npz", rows=64, seed=5))["x"]
    unlike = np.random.default_rng(7).standard_normal((64, 32)).astype(np.float32)
    rows = [part for i in range(4) for part in (like[16 * i:16 * i + 16], unlike[16 * i:16 * i + 16])]
    (tmp_path / "h").mkdir()
    np.savez(tmp_path / "h" / "h.npz", x=np.concatenate(rows))
    return tmp_path / "h"


def test_max_error_holds_on_the_verification_data_too(tmp_path):
    model = mlp(widths=(32, 64, 64, 32, 16))
    calib = Calibration(model, correlated(tmp_path / "c.npz", rows=96), batch_size=16)
    held = Calibration(model, unlike_halves(tmp_path), batch_size=16)
    parts = selection_parts(held)
    budget = 0.45
    pruned, report = prune_model(model, PruneOptions(method="wanda", prune_head=True, max_error=budget), calib,
                                 holdout=held)
    verified = ReferenceOutputs(model, parts.verify).error_of_model(pruned)
    selected = ReferenceOutputs(model, parts.select).error_of_model(pruned)
    assert verified.rel_l2 <= budget and selected.rel_l2 <= budget
    assert report.output_error.rel_l2 == pytest.approx(verified.rel_l2, rel=1e-5)
    assert report.output_error_selection.rel_l2 == pytest.approx(selected.rel_l2, rel=1e-5)
    # the greedy had kept more on the selection data alone; the last of them went back to dense
    assert len(report.layers) < sum(step["kept"] for step in report.selection)
    assert "went back to dense" in report.note
    assert any("dropped after the choice" in s.reason for s in report.skipped)


def test_nothing_within_e_on_the_verification_data_writes_nothing(tmp_path):
    onnx.save(mlp(widths=(32, 64, 64, 32, 16)), tmp_path / "m.onnx")
    result = cli("prune", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--method", "wanda", "--prune-head",
                 "--max-error", "0.35", "--calib", correlated(tmp_path / "c.npz", rows=96),
                 "--holdout", unlike_halves(tmp_path), "--batch-size", "16", "-q")
    assert result.returncode != 0
    line = result.stderr.strip().splitlines()[-1]
    assert "on every held-out part" in line and "closest is" in line and "Traceback" not in result.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_nothing_fits_names_the_closest_layer_and_writes_nothing(tmp_path):
    onnx.save(mlp(), tmp_path / "m.onnx")
    result = cli("prune", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--prune-head", "--max-error", "1e-9",
                 "--calib", correlated(tmp_path / "c.npz", rows=32), "-q")
    assert result.returncode != 0
    line = result.stderr.strip().splitlines()[-1]
    assert "closest is fc" in line and "held-out output relative L2" in line and "Traceback" not in result.stderr
    assert not (tmp_path / "o.onnx").exists()


# --- --method auto (issue 20 item 3) ---------------------------------------------------------------


def test_auto_reports_a_method_per_layer_and_is_no_worse_than_each_method(tmp_path):
    model = mlp(widths=(32, 64, 64, 32, 16))
    calib = Calibration(model, correlated(tmp_path / "c.npz", rows=96), batch_size=16)
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt", "auto"):
        _, report = prune_model(model, PruneOptions(method=method, prune_head=True), calib)
        errors[method] = report.output_error.rel_l2
        if method == "auto":
            assert len(report.layers) == 4
            assert all(r.method.split()[0] in ("magnitude", "wanda", "sparsegpt") for r in report.layers)
            assert all(t["method"] for t in report.selection)
    assert errors["auto"] <= min(errors["magnitude"], errors["wanda"], errors["sparsegpt"]) * 1.0001


def test_auto_from_the_cli_lists_the_method_per_layer(tmp_path):
    onnx.save(mlp(), tmp_path / "m.onnx")
    result = cli("prune", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--method", "auto", "--prune-head",
                 "--calib", correlated(tmp_path / "c.npz", rows=64), "-q")
    assert result.returncode == 0, result.stderr
    assert "method" in result.stdout and "fit data" in result.stdout
    assert "verification data" in result.stdout and "selection data" in result.stdout
    sens = cli("sensitivity", tmp_path / "m.onnx", "--method", "auto", "--prune-head",
               "--calib", tmp_path / "c.npz", "-q")
    assert sens.returncode == 0, sens.stderr
    assert "best method" in sens.stdout and "held-out" in sens.stdout


# --- choosing and verifying on separate held-out data ----------------------------------------------


def test_selection_and_verification_parts_are_disjoint(tmp_path):
    model = mlp()
    calib = Calibration(model, correlated(tmp_path / "c.npz", rows=128), batch_size=8)
    parts = selection_parts(split_calibration(calib).held)  # 4 held-out batches of 8
    select = np.concatenate([b["x"] for b in parts.select])
    verify = np.concatenate([b["x"] for b in parts.verify])
    fit = np.concatenate([b["x"] for b in split_calibration(calib).fit])
    assert parts.disjoint and len(select) == 16 and len(verify) == 16
    rows = lambda a: {r.tobytes() for r in a}  # noqa: E731
    assert not rows(select) & rows(verify) and not (rows(select) | rows(verify)) & rows(fit)
    one = selection_parts(Calibration(model, tmp_path / "c.npz", batch_size=128))  # one batch: its halves
    assert [len(b["x"]) for b in one.select] == [64] and [len(b["x"]) for b in one.verify] == [64]
    single = correlated(tmp_path / "one.npz", rows=1)
    alone = selection_parts(Calibration(model, single))
    assert not alone.disjoint and "one held-out sample" in alone.description


@pytest.mark.parametrize("method, budget", [("auto", 0.3), ("magnitude", 0.8)])
def test_reported_error_is_not_the_one_the_selection_optimised(tmp_path, method, budget):
    """--holdout DIR is split in two: the choice sees one half; the report leads with the other."""
    model = mlp(widths=(32, 64, 64, 32, 16))
    calib = Calibration(model, correlated(tmp_path / "c.npz", rows=64), batch_size=16)
    (tmp_path / "h").mkdir()
    correlated(tmp_path / "h" / "a.npz", rows=16, seed=5)
    correlated(tmp_path / "h" / "b.npz", rows=16, seed=6)
    held = Calibration(model, tmp_path / "h", batch_size=16)  # one batch per file
    options = PruneOptions(method=method, prune_head=True, max_error=budget)
    pruned, report = prune_model(model, options, calib, holdout=held)
    first = [b["x"] for b in Calibration(model, tmp_path / "h" / "a.npz")]
    second = [b["x"] for b in Calibration(model, tmp_path / "h" / "b.npz")]
    on_first = ReferenceOutputs(model, [{"x": x} for x in first]).error_of_model(pruned)
    on_second = ReferenceOutputs(model, [{"x": x} for x in second]).error_of_model(pruned)
    assert report.output_error_selection.rel_l2 == pytest.approx(on_first.rel_l2, rel=1e-5) and on_first.rel_l2 <= budget
    assert report.output_error.rel_l2 == pytest.approx(on_second.rel_l2, rel=1e-5)
    assert report.output_error.rel_l2 != report.output_error_selection.rel_l2
    assert "verifying" in report.holdout
    data = report.to_json()
    assert data["output_error_selection"]["relative_l2"] <= budget


def test_plain_methods_report_no_selection_error(tmp_path):
    model = mlp()
    calib = Calibration(model, correlated(tmp_path / "c.npz", rows=64), batch_size=8)
    _, report = prune_model(model, PruneOptions(method="wanda", prune_head=True), calib)
    assert report.output_error_selection is None and "verifying" not in report.holdout
