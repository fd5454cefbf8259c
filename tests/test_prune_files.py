"""Pruning a model with external data layer by layer (weights read from and written to files)
gives the same weights as pruning it in memory, and never loads the whole model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxsparse import io
from onnxsparse.prune import Calibration, PruneOptions, files, prune_model
from onnxsparse.prune.layers import read_weight, scan_layers


def chain(tmp_path, widths=(64, 128, 64, 32), name="m.onnx"):
    """x -> MatMul -> Relu -> ... -> y, every weight in ``<name>.data`` (plus a small bias inline)."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i, (k, n) in enumerate(zip(widths, widths[1:])):
        inits.append(numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"fc{i}"))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"]))
        prev = f"r{i}"
    inits.append(numpy_helper.from_array(np.ones(widths[-1], np.float32), "bias"))
    nodes.append(helper.make_node("Add", [prev, "bias"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, widths[0]])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, widths[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / name
    onnx.save(model, path, save_as_external_data=True, location=f"{name}.data", size_threshold=1024)
    rows = rng.standard_normal((64, 8)) @ rng.standard_normal((8, widths[0]))
    np.savez(tmp_path / "calib.npz", x=(rows + 0.1 * rng.standard_normal(rows.shape)).astype(np.float32))
    return path


def cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxsparse", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("method", ["magnitude", "sparsegpt", "wanda"])
def test_streamed_prune_equals_in_memory_prune(tmp_path, method):
    path = chain(tmp_path)
    out = tmp_path / "out" / "p.onnx"
    out.parent.mkdir()
    result = cli("prune", path, "-o", out, "--method", method, "--prune-head", "--calib", tmp_path / "calib.npz",
                 "--device", "numpy", "--json", "-q")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["written"] == [str(out.parent / "p.onnx.data"), str(out)]
    model = io.load_model(path)
    expected, _ = prune_model(model, PruneOptions(method=method, prune_head=True, device="numpy"),
                              Calibration(model, tmp_path / "calib.npz"))
    streamed = onnx.load(out)  # external data read back by onnx itself: the file is a plain ONNX model
    assert io.uses_external_data(out)
    found = {t.name: numpy_helper.to_array(t) for t in streamed.graph.initializer}
    for tensor in expected.graph.initializer:
        assert np.array_equal(found[tensor.name], numpy_helper.to_array(tensor)), tensor.name
    assert report["output_error"]["relative_l2"] > 0
    assert not list(out.parent.glob(".onnxsparse-staging-*"))  # scratch files removed
    assert (path.parent / "m.onnx.data").stat().st_size > 0  # the input is untouched


def test_weights_are_read_from_their_files_one_at_a_time(tmp_path, monkeypatch):
    """Within ``files.open_model`` no tensor holds data in memory; reads go through memory maps."""
    path = chain(tmp_path)
    reads = []
    original = files.ModelFiles.read

    def counting(self, tensor):
        reads.append(tensor.name)
        return original(self, tensor)

    monkeypatch.setattr(files.ModelFiles, "read", counting)
    with files.open_model(path, tmp_path / "o.onnx") as (model, store):
        large = [t for t in model.graph.initializer if files.is_external(t)]
        assert len(large) == 3 and all(not t.raw_data for t in large)
        layers = scan_layers(model, prune_head=True).layers
        pruned, report = prune_model(model, PruneOptions(method="magnitude", prune_head=True), None)
        assert sorted(reads) == ["w0", "w1", "w2"]
        assert all(files.is_external(t) for t in pruned.graph.initializer if t.name.startswith("w"))
        for layer in layers:  # the pruned values are in the scratch file, 2:4 along K
            values = read_weight(pruned, layer)
            assert (np.count_nonzero(values.reshape(-1, 4, values.shape[1]), axis=1) <= 2).all()
        written = files.save(pruned, tmp_path / "o.onnx", store, inputs=[path])
    assert [p.name for p in written] == ["o.onnx.data", "o.onnx"]
    assert not list(tmp_path.glob(".onnxsparse-staging-*"))


def test_streamed_output_replaces_an_earlier_one(tmp_path):
    path = chain(tmp_path)
    out = tmp_path / "o.onnx"
    for method in ("magnitude", "sparsegpt"):
        result = cli("prune", path, "-o", out, "--method", method, "--prune-head", "--calib",
                     tmp_path / "calib.npz", "-q")
        assert result.returncode == 0, result.stderr
    data = [p.name for p in tmp_path.glob("o.onnx*.data")]
    assert len(data) == 1  # the earlier output's data file went with it
    onnx.load(out)  # loads with its data


def test_output_never_overwrites_the_input_data(tmp_path):
    path = chain(tmp_path, name="m.onnx")
    result = cli("prune", path, "-o", tmp_path / "m.onnx", "-q")
    assert result.returncode != 0 and "overwrite the input" in result.stderr
    before = (tmp_path / "m.onnx.data").read_bytes()
    result = cli("prune", path, "-o", tmp_path / "m2.onnx", "--prune-head", "-q")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.onnx.data").read_bytes() == before


def test_streamed_auto_with_a_budget_equals_in_memory(tmp_path):
    """--method auto --max-error: candidates fed to one session, the kept weights written to the
    scratch file and the final model's errors measured through mapped initializers."""
    path = chain(tmp_path)
    out = tmp_path / "a.onnx"
    result = cli("prune", path, "-o", out, "--method", "auto", "--max-error", "0.3", "--prune-head",
                 "--calib", tmp_path / "calib.npz", "--device", "numpy", "--json", "-q")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    model = io.load_model(path)
    expected, expected_report = prune_model(model, PruneOptions(method="auto", max_error=0.3, prune_head=True,
                                                                device="numpy"),
                                            Calibration(model, tmp_path / "calib.npz"))
    assert report["output_error"]["relative_l2"] == pytest.approx(expected_report.output_error.rel_l2, rel=1e-5)
    assert report["output_error_selection"]["relative_l2"] <= 0.3
    found = {t.name: numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
    for tensor in expected.graph.initializer:
        assert np.array_equal(found[tensor.name], numpy_helper.to_array(tensor)), tensor.name
