"""``benchmarks/prune_bench.py --eval-count/--calib-count``: the counts reach each task, bad counts are
one line, and rec's rendered evaluation lines stay disjoint from its calibration lines at 600."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "prune_bench.py"
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "benchmarks" / "ppocr"))


@pytest.mark.parametrize("option", ["--eval-count", "--calib-count"])
def test_a_count_below_one_is_one_line(option, tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--models", "rec", "--out", str(tmp_path), option, "0"],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"{option} must be a positive number of samples, got 0"]


def test_counts_reach_bench(monkeypatch, tmp_path):
    import prune_bench

    seen, metrics, recovers = [], [], []

    class Stop(Exception):
        pass

    def fake_bench(name, budgets, methods, holdout, order, eval_count, calib_count, pad_channels=False,
                   error_metric="l2", recover=0, recover_lr=1e-3):
        seen.append((name, eval_count, calib_count))
        metrics.append(error_metric)
        recovers.append((recover, recover_lr))
        raise Stop

    monkeypatch.setattr(prune_bench, "bench", fake_bench)
    for argv, expected in ((["--eval-count", "600"], ("rec", 600, None)),
                           (["--calib-count", "48", "--eval-count", "30"], ("rec", 30, 48)),
                           ([], ("rec", None, None))):
        monkeypatch.setattr(sys, "argv", ["prune_bench.py", "--models", "rec", "--out", str(tmp_path), *argv])
        with pytest.raises(Stop):
            prune_bench.main()
        assert seen[-1] == expected
    assert metrics == ["l2"] * 3
    monkeypatch.setattr(sys, "argv", ["prune_bench.py", "--models", "rec", "--out", str(tmp_path),
                                      "--error-metric", "flips"])
    with pytest.raises(Stop):
        prune_bench.main()
    assert metrics[-1] == "flips" and recovers[-1] == (0, 1e-3)
    monkeypatch.setattr(sys, "argv", ["prune_bench.py", "--models", "rec", "--out", str(tmp_path),
                                      "--recover", "3000", "--recover-lr", "0.0005"])
    with pytest.raises(Stop):
        prune_bench.main()
    assert recovers[-1] == (3000, 0.0005)


def test_markdown_says_whether_the_rows_were_recovered():
    import prune_bench

    row = {"method": "auto", "max_error": 0.2, "layers": 1, "share": 0.5, "metric": 99.0, "delta": 0.0,
           "held_out": 0.1, "fit": 0.1, "selection": 0.1, "seconds": 1.0, "methods": {}}
    record = {"command": "x", "seconds": 60, "environment": {"cpus": 2, "onnxruntime": "1"},
              "correlation": {"held_out": 0.0, "fit": 0.0, "n": 1},
              "models": [{"model": "m.onnx", "metric": "acc", "dense": 99.0, "eval": 1, "calib": 1, "rows": [row],
                          "left_dense": {}}]}
    assert "no fine-tuning" in prune_bench.markdown(record)
    row["recovery"] = {"steps": 3000}
    assert "then `--recover 3000`" in prune_bench.markdown(record)


def test_rec_eval_lines_disjoint_from_calibration_at_600():
    from render import make_lines

    # As Rec renders them with --eval-count 600 --holdout (96 calibration lines, doubled).
    texts, _ = make_lines(600, seed=1)
    calib, _ = make_lines(192, seed=2, exclude=set(texts))
    assert len(set(texts)) == 600 and len(set(calib)) == 192
    assert not set(texts) & set(calib)
    # The first 120 lines are the default run's: a larger count extends the evaluation set.
    assert texts[:120] == make_lines(120, seed=1)[0]
