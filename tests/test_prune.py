"""Pruning to 2:4: the sparse axis of each layout, the three methods, layer choice, im2col."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import make_model
from onnx import numpy_helper

from onnxsparse.format import group_stats, to_rows_k
from onnxsparse.prune import Calibration, PruneOptions, prune_model, scan_layers
from onnxsparse.prune.capture import unfold_conv
from onnxsparse.prune.layers import ConvGeometry

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'
METHODS = ["magnitude", "wanda", "sparsegpt"]


def weight_of(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def assert_exact_2of4(weight: np.ndarray, layout: str) -> None:
    """Exactly 2 non-zeros in every group of 4 along SPEC's K axis (random weights have no zeros)."""
    rows = to_rows_k(weight, layout)
    per_group = (rows.reshape(rows.shape[0], -1, 4) != 0).sum(axis=-1)
    assert (per_group == 2).all()


def rng_weight(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


LAYER_MODELS = {
    "matmul": (
        "g (float[N, 16] x) => (float[N, 8] y) { y = MatMul(x, w) }",
        {"w": rng_weight((16, 8))}, "kn",
    ),
    "gemm_transB1": (
        "g (float[N, 16] x) => (float[N, 8] y) { y = Gemm<transB=1>(x, w, b) }",
        {"w": rng_weight((8, 16)), "b": rng_weight((8,), 1)}, "nk",
    ),
    "gemm_transB0": (
        "g (float[N, 16] x) => (float[N, 8] y) { y = Gemm(x, w) }",
        {"w": rng_weight((16, 8))}, "kn",
    ),
    "conv_groups": (
        "g (float[N, 16, 9, 9] x) => (float[N, 6, 5, 5] y)"
        " { y = Conv<group=2, strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[3, 3]>(x, w) }",
        {"w": rng_weight((6, 8, 3, 3))}, "oihw",
    ),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", sorted(LAYER_MODELS))
def test_each_method_gives_exact_2of4_along_spec_axis(method, kind):
    text, weights, layout = LAYER_MODELS[kind]
    model = make_model(f"{HEADER} {text}", **weights)
    pruned, report = prune_model(model, PruneOptions(method=method, prune_head=True), Calibration(model, samples=8))
    assert [layer.weight for layer in report.layers] == ["w"]
    assert_exact_2of4(weight_of(pruned, "w"), layout)
    assert report.layers[0].compliant == 1.0
    assert 0.5 < report.layers[0].retained < 1.0
    assert report.output_error is not None and report.output_error.rel_l2 > 0


def test_general_n_of_m():
    model = make_model(f"{HEADER} g (float[N, 16] x) => (float[N, 8] y) {{ y = MatMul(x, w) }}", w=rng_weight((16, 8)))
    pruned, _ = prune_model(model, PruneOptions(method="sparsegpt", n=1, m=8, prune_head=True), Calibration(model, samples=8))
    rows = to_rows_k(weight_of(pruned, "w"), "kn")
    assert ((rows.reshape(8, 2, 8) != 0).sum(axis=-1) == 1).all()


def test_head_is_kept_dense_by_default():
    model = make_model(
        f"{HEADER} g (float[N, 16] x) => (float[N, 8] y) {{ h = MatMul(x, w1) r = Relu(h) y = MatMul(r, w2) }}",
        w1=rng_weight((16, 16)), w2=rng_weight((16, 8), 1),
    )
    scan = scan_layers(model)
    assert [layer.weight for layer in scan.layers] == ["w1"]
    assert "head" in scan.skipped[0].reason
    assert [layer.weight for layer in scan_layers(model, prune_head=True).layers] == ["w1", "w2"]
    assert [layer.weight for layer in scan_layers(model, prune_head=True, exclude=["MatMul_2"]).layers] == ["w1"]
    assert scan_layers(model, prune_head=True, include=["Gemm"]).layers == []


def test_shared_weight_pruned_once_or_skipped_with_reason():
    text = f"""{HEADER} g (float[N, 16] x) => (float[N, 16] y) {{
        a = Identity(w) h = MatMul(x, a) r = Relu(h) o = MatMul(r, w) y = Relu(o) }}"""
    model = make_model(text, w=rng_weight((16, 16)))
    pruned, report = prune_model(model, PruneOptions(method="sparsegpt", prune_head=True), Calibration(model, samples=8))
    assert len(report.layers) == 1 and report.layers[0].name == "MatMul_1+MatMul_3"
    assert_exact_2of4(weight_of(pruned, "w"), "kn")

    shared_with_add = make_model(
        f"{HEADER} g (float[N, 16] x) => (float[N, 16] y) {{ h = MatMul(x, w) y = Add(h, w) }}", w=rng_weight((16, 16))
    )
    scan = scan_layers(shared_with_add, prune_head=True)
    assert scan.layers == [] and "weight shared with Add_1 (Add)" in scan.skipped[0].reason


@pytest.mark.parametrize(
    "text, reason",
    [
        ("g (float[N, 16] x, float[16, 8] w) => (float[N, 8] y) { y = MatMul(x, w) }", "graph input"),
        ("g (float[N, 6] x) => (float[N, 8] y) { y = MatMul(x, w) }", "K=6 is not a multiple of 4"),
        ("g (float[N, 16] x) => (float[N, 8] y) { t = Transpose(v) y = MatMul(x, t) }", "computed by a Transpose node"),
    ],
)
def test_ineligible_layers_have_reasons(text, reason):
    shapes = {"K=6": {"w": rng_weight((6, 8))}, "Transpose": {"v": rng_weight((8, 16))}}
    weights = next((w for key, w in shapes.items() if key in reason), {})
    if "graph input" in reason:
        weights = {"w": rng_weight((16, 8))}
    scan = scan_layers(make_model(f"{HEADER} {text}", **weights), prune_head=True)
    assert scan.layers == [] and reason in scan.skipped[0].reason


def test_pruner_and_compiler_share_layer_discovery_and_its_reasons():
    from onnxsparse.api import check_model

    text = "g (float[N, 16] x) => (float[N, 8] y) { t = Transpose(v) y = MatMul(x, t) }"
    model = make_model(f"{HEADER} {text}", v=rng_weight((8, 16)))
    (skipped,) = scan_layers(model, prune_head=True).skipped
    (record,) = check_model(model).layers
    assert skipped.reason == record.reason


def _correlated_inputs(path, k=32, samples=256, seed=0):
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((4, k))
    x = rng.standard_normal((samples, 4)) @ basis + 0.05 * rng.standard_normal((samples, k))
    np.savez(path, x=x.astype(np.float32))
    return path


def test_sparsegpt_beats_magnitude_on_correlated_inputs(tmp_path):
    model = make_model(f"{HEADER} g (float[N, 32] x) => (float[N, 16] y) {{ y = MatMul(x, w) }}", w=rng_weight((32, 16)))
    calib = Calibration(model, _correlated_inputs(tmp_path / "calib.npz"), batch_size=64)
    errors = {}
    for method in METHODS:
        _, report = prune_model(model, PruneOptions(method=method, prune_head=True), calib)
        errors[method] = report.output_error.rel_l2  # held-out: magnitude captures nothing, has no layer error
        assert (report.layers[0].layer_error is None) == (method == "magnitude")
    assert errors["sparsegpt"] < 0.5 * errors["magnitude"]
    assert errors["sparsegpt"] < errors["wanda"]


def test_wanda_weighs_weights_by_input_channel_norm(tmp_path):
    weight = rng_weight((16, 8))
    model = make_model(f"{HEADER} g (float[N, 16] x) => (float[N, 8] y) {{ y = MatMul(x, w) }}", w=weight)
    scales = np.array([10.0, 0.1, 1.0, 3.0] * 4, np.float32)
    x = np.random.default_rng(3).standard_normal((128, 16)).astype(np.float32) * scales
    np.savez(tmp_path / "calib.npz", x=x)
    calib = Calibration(model, tmp_path / "calib.npz")
    by_method = {
        method: weight_of(prune_model(model, PruneOptions(method=method, prune_head=True), calib)[0], "w") != 0
        for method in ("magnitude", "wanda")
    }
    assert (by_method["magnitude"] != by_method["wanda"]).any()
    norms = np.sqrt((x.astype(np.float64) ** 2).sum(axis=0))
    score = to_rows_k(np.abs(weight) * norms[:, None], "kn").reshape(8, 4, 4)
    expected = np.zeros_like(score, dtype=bool)
    np.put_along_axis(expected, np.argsort(-score, axis=-1)[..., :2], True, axis=-1)
    assert (to_rows_k(by_method["wanda"], "kn").reshape(8, 4, 4) == expected).all()


@pytest.mark.parametrize(
    "attrs, shape",
    [
        ("group=1, kernel_shape=[3, 3]", (8, 8, 3, 3)),
        ("group=2, strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2], kernel_shape=[3, 2]", (6, 4, 3, 2)),
        ('group=4, auto_pad="SAME_UPPER", strides=[2, 2], kernel_shape=[3, 3]', (8, 2, 3, 3)),
    ],
)
def test_unfold_conv_matches_onnx_conv(attrs, shape):
    """im2col in (kh, kw, c) order times the [OC, K] weight view equals ONNX Runtime's Conv."""
    weight = rng_weight(shape)
    model = make_model(f"{HEADER} g (float[1, 8, 7, 9] x) => (float[1, {shape[0]}, ?, ?] y) {{ y = Conv<{attrs}>(x, w) }}",
                       w=weight)
    x = rng_weight((1, 8, 7, 9), 5)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    layer = scan_layers(model, m=1, prune_head=True).layers[0]
    geometry: ConvGeometry = layer.uses[0].conv
    cols = unfold_conv(x[0].astype(np.float64), geometry)  # [groups, OH*OW, K]
    rows = to_rows_k(weight.astype(np.float64), "oihw").reshape(geometry.group, shape[0] // geometry.group, -1)
    got = np.concatenate([cols[g] @ rows[g].T for g in range(geometry.group)], axis=1)
    assert np.allclose(got.T.reshape(expected.shape), expected, atol=1e-4)


def test_sequential_prunes_every_layer_and_reports_errors():
    text = f"""{HEADER} g (float[N, 3, 8, 8] x) => (float[N, 10] y) {{
        c1 = Conv<kernel_shape=[3, 3], pads=[1, 1, 1, 1]>(x, w1) r1 = Relu(c1)
        c2 = Conv<kernel_shape=[1, 1]>(r1, w2) r2 = Relu(c2)
        p = GlobalAveragePool(r2) f = Flatten(p) h = Gemm<transB=1>(f, w3, b3) r3 = Relu(h)
        y = MatMul(r3, w4) }}"""
    model = make_model(text, w1=rng_weight((8, 3, 3, 3)), w2=rng_weight((16, 8, 1, 1), 1),
                       w3=rng_weight((12, 16), 2), b3=rng_weight((12,), 3), w4=rng_weight((12, 10), 4))
    pruned, report = prune_model(model, PruneOptions(method="sparsegpt"), Calibration(model, samples=16))
    assert [layer.weight for layer in report.layers] == ["w2", "w3"]
    assert {s.weight: s.reason for s in report.skipped}["w1"] == "C/group=3 is not a multiple of 4"
    assert report.heads == ["MatMul_8"]
    for name, layout in (("w2", "oihw"), ("w3", "nk")):
        assert group_stats(to_rows_k(weight_of(pruned, name), layout)).share == 1.0
    assert (weight_of(pruned, "w1") == weight_of(model, "w1")).all()
    assert all(0 < layer.layer_error < 1 for layer in report.layers)
    assert 0 < report.output_error.cosine <= 1


def test_float16_weight_keeps_dtype():
    model = make_model(
        f"{HEADER} g (float16[N, 16] x) => (float16[N, 8] y) {{ y = MatMul(x, w) }}", w=rng_weight((16, 8)).astype(np.float16)
    )
    pruned, _ = prune_model(model, PruneOptions(method="sparsegpt", prune_head=True), Calibration(model, samples=8))
    weight = weight_of(pruned, "w")
    assert weight.dtype == np.float16
    assert group_stats(to_rows_k(weight, "kn")).share == 1.0


def test_frontier_gives_the_same_layer_inputs_as_running_from_the_graph_inputs():
    from onnxsparse.prune.capture import Frontier, capture

    text = f"""{HEADER} g (float[N, 16] x) => (float[N, 8] y) {{
        a = MatMul(x, w1) b = Relu(a) c = MatMul(b, w2) d = Add(c, a) e = Relu(d) y = MatMul(e, w3) }}"""
    model = make_model(text, w1=rng_weight((16, 16)), w2=rng_weight((16, 16), 1), w3=rng_weight((16, 8), 2))
    calibration = Calibration(model, samples=16)
    layers = scan_layers(model, prune_head=True).layers
    frontier = Frontier(model, calibration)
    frontier.advance(model, 2)  # past the first MatMul and Relu: 'a' (read again by Add) and 'b' cross the cut
    assert sorted(frontier.live(model, 2)) == ["a", "b"] and frontier.cache is not None
    direct = capture(model, layers[1:], calibration)
    cached = capture(model, layers[1:], frontier.batches())
    for layer in layers[1:]:
        np.testing.assert_allclose(cached[layer.weight].hessian, direct[layer.weight].hessian, rtol=1e-6)
