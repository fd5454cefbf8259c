"""``prune --error-metric flips``: --max-error bounds the share of held-out positions whose argmax over
the output's last axis changes from the dense model's (a classifier's predicted class), not the L2."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from test_prune_holdout import cli, correlated, mlp

from onnxsparse.errors import OnnxSparseError
from onnxsparse.prune import Calibration, PruneOptions, prune_model
from onnxsparse.prune.evaluate import OutputError, ReferenceOutputs
from onnxsparse.prune.holdout import selection_parts, split_calibration


def test_flips_count_changed_argmaxes(tmp_path):
    model = mlp(dims=(-1, 32), widths=(32, 64, 32, 10))
    calib = Calibration(model, correlated(tmp_path / "c.npz", rows=40), batch_size=8)
    reference = ReferenceOutputs(model, calib)
    dense = [o[0] for o in reference._dense_outputs()]
    assert reference.has_classes()
    # flip the argmax of the first 3 rows of every batch of 8: 3/8 of the positions
    outputs = iter([o.copy() for o in dense])

    def run(batch):
        y = next(outputs)
        top = np.argmax(y, axis=-1)
        for row in range(3):
            y[row, top[row]] = y[row].min() - 1.0
        return [y]

    error = reference.error(run)
    assert error.flips == pytest.approx(3 / 8)
    assert error.rel_l2 > 0
    same = iter([o.copy() for o in dense])
    assert reference.error(lambda batch: [next(same)]).flips == 0.0
    assert OutputError(0.1, 0.9, 0.25).text("flips") == "argmax flips 25.00%"
    assert "argmax_flips" in error.to_json()


def test_max_error_bounds_the_flips(tmp_path):
    model = mlp(dims=(-1, 32), widths=(32, 64, 64, 10), seed=3)
    calib = Calibration(model, correlated(tmp_path / "c.npz", rows=192), batch_size=16)
    budget = 0.3  # a random-init classifier's logits are close: pruning any layer flips some
    options = PruneOptions(method="magnitude", prune_head=True, max_error=budget, error_metric="flips")
    pruned, report = prune_model(model, options, calib)
    assert report.layers, "nothing kept"
    assert report.output_error_selection.flips <= budget
    assert report.output_error.flips <= budget  # the verification data too (the back-off holds it)
    kept = [step for step in report.selection if step["kept"]]
    assert all(step["argmax_flips"] <= budget for step in kept)
    # measured independently: the held-out selection part's argmaxes, dense against pruned
    parts = selection_parts(split_calibration(calib).held)
    check = ReferenceOutputs(model, parts.select).error_of_model(pruned)
    assert check.flips == pytest.approx(report.output_error_selection.flips)
    # the L2 budget of the same size is another promise: a flips budget lets through a larger L2
    assert math.isfinite(report.output_error.rel_l2)


def test_flips_refused_without_a_class_axis_or_budget(tmp_path):
    model = mlp(dims=(-1, 32), widths=(32, 64, 1))
    calib = Calibration(model, correlated(tmp_path / "c.npz", rows=64), batch_size=16)
    with pytest.raises(OnnxSparseError, match="needs an output whose last axis holds 2 or more classes"):
        prune_model(model, PruneOptions(max_error=0.1, error_metric="flips", prune_head=True), calib)
    with pytest.raises(OnnxSparseError, match="give --max-error E too"):
        PruneOptions(error_metric="flips").validate()
    with pytest.raises(OnnxSparseError, match="unknown --error-metric"):
        PruneOptions(max_error=0.1, error_metric="top1").validate()


def test_cli(tmp_path):
    model = mlp(dims=(-1, 32), widths=(32, 64, 64, 10), seed=3)
    onnx.save(model, tmp_path / "m.onnx")
    correlated(tmp_path / "c.npz", rows=128)
    done = cli("prune", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--max-error", "0.4", "--error-metric",
               "flips", "--calib", tmp_path / "c.npz", "--prune-head")
    assert done.returncode == 0, done.stderr
    assert "argmax flips" in done.stdout, done.stdout
    bad = cli("prune", tmp_path / "m.onnx", "-o", tmp_path / "p.onnx", "--error-metric", "flips")
    assert bad.returncode != 0 and "give --max-error E too" in bad.stderr and "Traceback" not in bad.stderr


def test_auto_under_a_flips_budget(tmp_path):
    """--method auto (its sequential candidate is pruned without a budget) under a flips budget."""
    model = mlp(dims=(-1, 32), widths=(32, 64, 64, 10), seed=3)
    calib = Calibration(model, correlated(tmp_path / "c.npz", rows=128), batch_size=16)
    _, report = prune_model(model, PruneOptions(method="auto", prune_head=True, max_error=0.3, error_metric="flips"),
                            calib)
    assert report.layers and report.output_error_selection.flips <= 0.3 and report.output_error.flips <= 0.3


def test_ratio_order_names_the_metric_it_ranked_by(tmp_path):
    """Under a flips budget the ratio order ranks layers by their flips alone, and the trace says so."""
    model = mlp(dims=(-1, 32), widths=(32, 64, 64, 10), seed=3)
    calib = Calibration(model, correlated(tmp_path / "c.npz", rows=128), batch_size=16)
    _, report = prune_model(model, PruneOptions(prune_head=True, max_error=0.3, error_metric="flips", order="ratio"),
                            calib)
    assert report.selection and all("alone_argmax_flips" in t and "alone_relative_l2" not in t
                                    for t in report.selection)
