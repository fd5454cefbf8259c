"""The greedy's visiting order under --max-error: largest first (size) or knapsack-style (ratio)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxsparse.errors import OnnxSparseError
from onnxsparse.prune import Calibration, PruneOptions, prune_model
from onnxsparse.prune.evaluate import ReferenceOutputs, WeightFeeds
from onnxsparse.prune.holdout import selection_parts, split_calibration
from onnxsparse.prune.layers import Layer, scan_layers
from onnxsparse.prune.methods import magnitude
from onnxsparse.prune.sensitivity import ratio_order


def near_24(rng, k, n, eps):
    """A [K, N] weight whose groups of 4 along K hold two values of about 1 and two of about eps:
    magnitude 2:4 pruning costs it little (eps large: much)."""
    w = rng.choice([-1.0, 1.0], (k, n)) * rng.uniform(0.8, 1.2, (k, n))
    small = rng.permuted(np.tile([True, True, False, False], (k // 4 * n, 1)), axis=1).reshape(k // 4, n, 4)
    small = small.transpose(0, 2, 1).reshape(k, n)
    w[small] *= eps
    return (w / np.sqrt(k)).astype(np.float32)


def chain(eps=(0.3, 0.6, 0.3), widths=(32, 64, 96, 48), seed=0) -> onnx.ModelProto:
    """x -> fc0 -> fc1 -> fc2 -> y (linear): fc1 (6,144 weights) costly to prune, fc0 and fc2
    (2,048 + 4,608 = 6,656) cheap."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (k, n) in enumerate(zip(widths, widths[1:])):
        inits.append(numpy_helper.from_array(near_24(rng, k, n, eps[i]), f"w{i}"))
        out = "y" if i == len(widths) - 2 else f"m{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out], name=f"fc{i}"))
        prev = out
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [-1, widths[0]])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [-1, widths[-1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def data(path, rows=128, k=32, seed=1):
    np.savez(path, x=np.random.default_rng(seed).standard_normal((rows, k)).astype(np.float32))
    return path


def errors_of(model, calib, sets, part="select"):
    """Error of the model with the named layers magnitude-pruned on the held-out selection part (as
    the greedy measures) or the verification part (which --max-error also bounds)."""
    layers = scan_layers(model, prune_head=True).layers
    data = getattr(selection_parts(split_calibration(calib).held), part)
    reference, feeds = ReferenceOutputs(model, data), WeightFeeds(model, layers)
    dense = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = {layer.name: (layer.weight, magnitude(dense[layer.weight].T, 2, 4).T) for layer in layers}  # K along rows
    found = {}
    for names in sets:
        fed = dict(weights[name] for name in names)
        found[names] = reference.error(lambda batch: feeds.run(batch, fed)).rel_l2
    return found


def test_ratio_keeps_more_weights_than_size_when_a_big_layer_eats_the_budget(tmp_path):
    model = chain()
    calib = Calibration(model, data(tmp_path / "c.npz"), batch_size=16)
    e = errors_of(model, calib, [("fc1",), ("fc0", "fc2"), ("fc0", "fc1"), ("fc1", "fc2")])
    v = errors_of(model, calib, [("fc1",), ("fc0", "fc2")], part="verify")
    budget = max(e[("fc1",)], e[("fc0", "fc2")], v[("fc1",)], v[("fc0", "fc2")]) * 1.01
    # The case: fc1 fits alone, so do fc0 and fc2 together (on both held-out parts), but fc1 with
    # either of them does not.
    assert e[("fc0", "fc1")] > budget and e[("fc1", "fc2")] > budget
    kept = {}
    for order in ("size", "ratio"):
        options = PruneOptions(method="magnitude", prune_head=True, max_error=budget, order=order)
        _, report = prune_model(model, options, calib)
        kept[order] = sorted(layer.name for layer in report.layers)
        assert report.output_error_selection.rel_l2 <= budget
    assert kept["size"] == ["fc1"]  # largest first: fc1 takes the budget
    assert kept["ratio"] == ["fc0", "fc2"]  # 6,656 weights instead of 6,144
    _, report = prune_model(model, PruneOptions(method="magnitude", prune_head=True, max_error=budget, order="ratio"),
                            calib)
    alone = {t["name"]: t["alone_relative_l2"] for t in report.selection}
    assert [t["name"] for t in report.selection][-1] == "fc1" and alone["fc1"] > max(alone["fc0"], alone["fc2"])


def test_ratio_order_ranks_weights_per_squared_error():
    def layer(name, params):
        return Layer(weight=name, shape=(params, 1), dtype=np.dtype(np.float32), layout="kn")

    layers = [layer("big", 1000), layer("mid", 400), layer("small", 100), layer("free", 10), layer("nan", 5000)]
    alone = {"big": 0.2, "mid": 0.1, "small": 0.01, "free": 0.0, "nan": float("nan")}
    # weights per squared error: small 1e6, mid 4e4, big 2.5e4; zero error first, NaN last
    assert [x.weight for x in ratio_order(layers, alone)] == ["free", "small", "mid", "big", "nan"]


def test_unknown_order_is_refused():
    with pytest.raises(OnnxSparseError, match="--order"):
        PruneOptions(order="random").validate()


def test_order_from_the_cli(tmp_path):
    import json
    import subprocess
    import sys

    onnx.save(chain(), tmp_path / "m.onnx")
    result = subprocess.run([sys.executable, "-m", "onnxsparse", "prune", str(tmp_path / "m.onnx"), "-o",
                             str(tmp_path / "o.onnx"), "--prune-head", "--max-error", "0.5", "--order", "ratio",
                             "--calib", str(data(tmp_path / "c.npz")), "--json", "-q"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    trace = json.loads(result.stdout)["selection"]
    assert len(trace) == 3 and all(t["alone_relative_l2"] > 0 for t in trace)
    ratios = [t["params"] / t["alone_relative_l2"] ** 2 for t in trace]
    assert ratios == sorted(ratios, reverse=True)
