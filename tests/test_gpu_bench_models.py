"""The models benchmarks/gpu_bench.py times (models/bench_nets.py): the per-conv models must be the
convs of the net they stand for, and their compiled form must compute what the dense one does
(checked here on the CPU EP; the timing itself runs only on a GPU). Also gpu_bench's time_pair."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnxruntime as ort
import pytest

from conftest import REPO

from models import bench_nets


def _gpu_bench():
    """benchmarks/gpu_bench.py, for its timing helpers (benchmarks/ is not a package)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_bench

    return gpu_bench


def _net() -> onnx.ModelProto:
    """An RGB stem (3 channels: not 2:4 eligible), then the same 3x3 conv twice and a strided 1x1."""
    f16 = onnx.TensorProto.FLOAT16
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "X"
    for i, (c, oc, k, s) in enumerate([(3, 8, 3, 1), (8, 8, 3, 1), (8, 8, 3, 1), (8, 16, 1, 2)]):
        inits.append(onnx.numpy_helper.from_array((rng.standard_normal((oc, c, k, k)) * 0.1).astype(np.float16), f"w{i}"))
        nodes.append(oh.make_node("Conv", [x, f"w{i}"], [f"y{i}"], kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4))
        x = f"y{i}"
    g = oh.make_graph(nodes, "net", [oh.make_tensor_value_info("X", f16, ["B", 3, 20, 20])],
                      [oh.make_tensor_value_info(x, f16, None)], initializer=inits)
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    m.ir_version = 10
    return m


def test_conv_specs_are_the_distinct_eligible_convs():
    specs = bench_nets.conv_specs(_net())
    assert specs == [{"c": 8, "oc": 8, "kernel": 3, "stride": 1, "pad": 1, "hw": 20},
                     {"c": 8, "oc": 16, "kernel": 1, "stride": 2, "pad": 0, "hw": 20}]


def test_resnet_conv_specs_cover_its_bottlenecks():
    specs = bench_nets.conv_specs(bench_nets.resnet_model())
    assert len(specs) == 22 and all(s["c"] % 4 == 0 for s in specs)
    assert {s["hw"] for s in specs} == {56, 28, 14, 7}


@pytest.mark.kernels
def test_conv_models_compute_the_same():
    from onnxsparse.session import session_options

    spec = {"c": 16, "oc": 24, "kernel": 3, "stride": 2, "pad": 1, "hw": 9}
    dense, sparse, ohw = bench_nets.conv_models(spec, np.random.default_rng(1))
    assert ohw == 5
    assert {n.op_type for n in onnx.load_from_string(sparse).graph.node} == {"Conv2dCompress"}
    x = (np.random.default_rng(2).standard_normal((2, 16, 9, 9)) * 0.5).astype(np.float16)
    outs = []
    for blob in (dense, sparse):
        sess = ort.InferenceSession(blob, session_options(), providers=["CPUExecutionProvider"])
        outs.append([y.astype(np.float64) for y in sess.run(None, {"X": x})])
    assert len(outs[1]) == bench_nets.LAYERS
    for d, s in zip(*outs):
        assert d.shape == (2, 24, 5, 5)
        assert np.linalg.norm(s - d) / np.linalg.norm(d) < 2e-3


@pytest.mark.kernels  # time_pair opens its sessions with the library registered
def test_time_pair_keeps_the_points_both_models_ran(monkeypatch):
    """Per-layer microseconds from each model's seconds per run; a point either model failed is
    left out (and logged), not reported against nothing."""
    gpu_bench = _gpu_bench()
    spec = {"c": 4, "oc": 4, "kernel": 1, "stride": 1, "pad": 0, "hw": 2}
    dense, sparse, _ = bench_nets.conv_models(spec, np.random.default_rng(0))
    monkeypatch.setattr(gpu_bench.ort, "InferenceSession", lambda blob, *a, **kw: "dense" if blob == dense else "sparse")
    logged = []
    monkeypatch.setattr(gpu_bench, "log", logged.append)

    def run(sess, point, graph_id):
        if (sess, point) == ("sparse", 3):
            raise RuntimeError("no kernel\nmore")
        return point * (2.0 if sess == "dense" else 1.0) * bench_nets.LAYERS * 1e-6

    timed = gpu_bench.time_pair(dense, sparse, [1, 3, 5], run, "what")
    assert [p for p, _, _ in timed] == [1, 5]
    np.testing.assert_allclose([[d, s] for _, d, s in timed], [[2.0, 1.0], [10.0, 5.0]])
    assert logged == ["  sparse what 3: no kernel"]
