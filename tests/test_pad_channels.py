"""``--pad-channels``: a 2-D Conv with group 1 whose C is not a multiple of 4 made eligible by
zero-padding its input channels (``onnxsparse.compiler.channel_padding``), an opt-in, exact extension.

The model is a small PP-LCNet-like stack: an RGB stem (C = 3), a 3x3 conv on C = 6, squeeze-excitation
1x1 convs reading C = 10 and 2, 1x1 convs on C = 10 and 50, and a grouped 3x3 conv with C/group = 6 (never
padded). Checked: the check's report with and without the option, the pruned weights (own shapes,
trailing group of real channels within 2 non-zeros) for every method, the compiled model's Pad nodes
and its output against ONNX Runtime's dense run, and ``verify``.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import make_model, random_input

import onnxsparse
from onnxsparse import format as fmt
from onnxsparse.api import check_model, compile_model
from onnxsparse.cli import main
from onnxsparse.compiler import channel_padding
from onnxsparse.prune import Calibration, PruneOptions, prune_model

# name -> (weight shape, group); C = shape[1] * group.
CONVS = {
    "stem": ((6, 3, 3, 3), 1),  # C = 3: the trailing group has 3 real channels
    "conv3x3": ((10, 6, 3, 3), 1),  # C = 6
    "se_1": ((2, 10, 1, 1), 1),  # C = 10, a multiple of nothing but 2
    "se_2": ((10, 2, 1, 1), 1),  # C = 2: the SE expand conv
    "expand": ((50, 10, 1, 1), 1),  # C = 10
    "reduce": ((12, 50, 1, 1), 1),  # C = 50
    "grouped": ((12, 6, 3, 3), 2),  # C/group = 6, group 2: not padded
    "head": ((8, 12, 1, 1), 1),  # C = 12: eligible anyway
}
PADDED = {"stem": (3, 4), "conv3x3": (6, 8), "se_1": (10, 12), "se_2": (2, 4), "expand": (10, 12), "reduce": (50, 52)}


def se_model(seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    weights = {f"W_{name}": rng.standard_normal(shape).astype(np.float32) * 0.3 for name, (shape, _) in CONVS.items()}
    weights.update({f"B_{name}": rng.standard_normal(shape[0]).astype(np.float32) * 0.1
                    for name, (shape, _) in CONVS.items()})
    text = f"""<ir_version: 8, opset_import: ["" : {opset}]> g (float[N,3,12,12] x) => (float[N,8,12,12] y) {{
        s = Conv<pads = [1, 1, 1, 1], strides = [1, 1]>(x, W_stem, B_stem)
        s_act = Relu(s)
        c = Conv<pads = [1, 1, 1, 1]>(s_act, W_conv3x3, B_conv3x3)
        c_act = Relu(c)
        pooled = GlobalAveragePool(c_act)
        z = Conv(pooled, W_se_1, B_se_1)
        z_act = Relu(z)
        e = Conv(z_act, W_se_2, B_se_2)
        gate = Sigmoid(e)
        scaled = Mul(c_act, gate)
        wide = Conv(scaled, W_expand, B_expand)
        wide_act = Relu(wide)
        narrow = Conv(wide_act, W_reduce, B_reduce)
        g = Conv<group = 2, pads = [1, 1, 1, 1]>(narrow, W_grouped, B_grouped)
        g_act = Relu(g)
        y = Conv(g_act, W_head, B_head)
    }}"""
    model = make_model(text, **weights)
    for node in model.graph.node:
        if node.op_type == "Conv":
            node.name = node.input[1][2:]
    return model


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name[2:]: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith("W_")}


def group_counts(weight: np.ndarray) -> np.ndarray:
    """Non-zeros per group of 4 input channels at each (oc, kh, kw), C zero-padded to a multiple of 4."""
    padded = channel_padding.pad_weight(weight, channel_padding.padded_channels(weight.shape[1]))
    oc, c4, kh, kw = padded.shape
    return np.count_nonzero(padded.transpose(0, 2, 3, 1).reshape(oc, kh, kw, c4 // 4, 4), axis=-1)


def calibration(model, tmp_path, samples: int = 16) -> Calibration:
    rng = np.random.default_rng(5)
    path = tmp_path / "calib.npz"
    np.savez(path, x=rng.standard_normal((samples, 3, 12, 12)).astype(np.float32))
    return Calibration(model, str(path), batch_size=4)


@pytest.fixture(scope="module")
def pruned_model():
    pruned, _ = prune_model(se_model(), PruneOptions(method="magnitude", prune_head=True, pad_channels=True))
    return pruned


# --- the shared helpers -----------------------------------------------------------------------------


def test_pad_target_accepts_only_2d_group_1_convs_off_a_multiple():
    assert channel_padding.pad_target("Conv", (8, 50, 1, 1), {}) == 52
    assert channel_padding.pad_target("Conv", (8, 3, 3, 3), {"group": 1}) == 4
    assert channel_padding.pad_target("Conv", (8, 48, 1, 1), {}) is None  # already a multiple
    assert channel_padding.pad_target("Conv", (8, 6, 3, 3), {"group": 2}) is None
    assert channel_padding.pad_target("Conv", (8, 6, 3), {}) is None  # 1-D
    assert channel_padding.pad_target("MatMul", (6, 8), {}) is None
    assert channel_padding.pad_target("Conv", (8, 6, 1, 1), {}, multiple=8) == 8


def test_pad_hessian_puts_each_feature_at_its_padded_position():
    # K = 2 kernel positions x C = 3 channels; padded to C4 = 4: features (p, c) -> p * 4 + c.
    h = np.arange(36, dtype=np.float64).reshape(1, 6, 6)
    wide = channel_padding.pad_hessian(h, 2, 3, 4)
    where = [0, 1, 2, 4, 5, 6]
    assert wide.shape == (1, 8, 8)
    np.testing.assert_array_equal(wide[0][np.ix_(where, where)], h[0])
    assert not wide[0, 3].any() and not wide[0, :, 7].any()


# --- check ------------------------------------------------------------------------------------------


def test_without_the_option_nothing_changes():
    report = check_model(se_model())
    reasons = {layer.node: layer.reason for layer in report.layers}
    for name, (channels, _) in PADDED.items():
        assert reasons[name] == f"C/group = {channels} is not a multiple of 4"
    assert reasons["grouped"] == "C/group = 6 is not a multiple of 4"
    assert all(layer.padded_channels is None for layer in report.layers)
    result = compile_model(se_model())
    assert {node.op_type for node in result.model.graph.node}.isdisjoint({"Pad"})
    assert sorted(d.record.node for d in result.rewritten) == []  # dense weights: nothing is 2:4


def test_check_judges_the_padded_weight(pruned_model):
    report = {layer.node: layer for layer in check_model(pruned_model, pad_channels=True).layers}
    for name, (channels, padded) in PADDED.items():
        layer = report[name]
        assert layer.eligible, (name, layer.reason)
        assert layer.padded_channels == padded and layer.shape[1] == channels
        assert layer.share == 1.0
    grouped = report["grouped"]
    assert not grouped.eligible and grouped.padded_channels is None
    assert grouped.reason == "C/group = 6 is not a multiple of 4; --pad-channels pads only Convs with group = 1"
    assert report["head"].eligible and report["head"].padded_channels is None


def test_trailing_group_of_three_real_channels_holds_at_most_two_non_zeros(pruned_model):
    stem = weights(pruned_model)["stem"].copy()
    stem[0, :, 0, 0] = [1.0, 2.0, 3.0]  # 3 non-zeros in the group (c0, c1, c2, pad)
    model = onnx.ModelProto()
    model.CopyFrom(pruned_model)
    tensor = next(t for t in model.graph.initializer if t.name == "W_stem")
    tensor.CopyFrom(onnx.numpy_helper.from_array(stem, "W_stem"))
    layer = next(layer for layer in check_model(model, pad_channels=True).layers if layer.node == "stem")
    groups = 6 * 3 * 3  # one (padded) group per (oc, kh, kw)
    assert not layer.eligible
    share = f"{100 / groups:.1f}%"
    assert layer.reason == f"{share} of groups have more than 2 non-zeros (after zero-padding C from 3 to 4)"


def test_check_cli_says_after_zero_padding(pruned_model, tmp_path, capsys):
    path = tmp_path / "pruned.onnx"
    onnx.save(pruned_model, path)
    assert main(["check", str(path), "--pad-channels"]) == 0
    out = capsys.readouterr().out
    assert "eligible after zero-padding C from 50 to 52" in out
    assert "eligible after zero-padding C from 2 to 4" in out
    assert "--pad-channels pads only Convs with group = 1" in out
    assert "7 of 8 layers eligible" in out
    assert main(["check", str(path), "--json", "--pad-channels"]) == 0
    layers = {layer["node"]: layer for layer in json.loads(capsys.readouterr().out)["layers"]}
    assert layers["reduce"]["padded_channels"] == 52 and layers["reduce"]["eligible"]
    assert main(["check", str(path)]) == 0
    assert "1 of 8 layers eligible" in capsys.readouterr().out  # the head only


# --- prune ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_prune_keeps_shapes_and_the_trailing_group_rule(method, tmp_path):
    model = se_model()
    options = PruneOptions(method=method, prune_head=True, pad_channels=True)
    pruned, report = prune_model(model, options, calibration(model, tmp_path))
    assert len(report.layers) == 7  # all but the grouped conv
    skipped = {s.node: s.reason for s in report.skipped}
    assert skipped == {"grouped": "C/group=6 is not a multiple of 4; --pad-channels pads only Convs with group = 1"}
    before, after = weights(model), weights(pruned)
    for name, weight in after.items():
        assert weight.shape == before[name].shape, name
    for name in [*PADDED, "head"]:
        counts = group_counts(after[name])
        assert counts.max() <= 2, name
        assert np.count_nonzero(after[name]) >= counts.size, name  # pruned, not emptied
    np.testing.assert_array_equal(after["grouped"], before["grouped"])
    assert {layer.shape for layer in report.layers} >= {(12, 50, 1, 1), (6, 3, 3, 3)}
    assert all(layer.compliant == 1.0 for layer in report.layers)
    assert check_model(pruned, pad_channels=True).eligible.__len__() == 7


def test_prune_without_the_option_skips_them(tmp_path):
    model = se_model()
    _, report = prune_model(model, PruneOptions(method="magnitude", prune_head=True))
    assert [layer.name for layer in report.layers] == ["head"]
    skipped = {s.node: s.reason for s in report.skipped}
    assert skipped["reduce"] == "C/group=50 is not a multiple of 4"


def test_padded_sparsegpt_equals_sparsegpt_on_an_explicitly_padded_model(tmp_path):
    """Padding is exact for the data-driven methods: the padded layer's pruned weight is what the
    method gives on a model whose Conv really reads C4 channels (the extra ones zero)."""
    from onnxsparse.prune.capture import Statistics
    from onnxsparse.prune.layers import Layer, Use
    from onnxsparse.prune.methods import prune_layer

    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 6, 3, 3)).astype(np.float32)
    x = rng.standard_normal((200, 9 * 6))  # rows in (kh, kw, c) order
    hessian = (x.T @ x)[None]
    options = PruneOptions(method="sparsegpt", device="numpy")
    uses = [Use(node="conv", op_type="Conv", activation="x", layout="oihw")]
    narrow = Layer("W", w.shape, np.dtype(np.float32), "oihw", uses, padded_channels=8)
    got, _ = prune_layer(narrow, w, Statistics(hessian, 200), options)
    wide = Layer("W", (8, 8, 3, 3), np.dtype(np.float32), "oihw", uses)
    x8 = np.zeros((200, 9, 8))
    x8[:, :, :6] = x.reshape(200, 9, 6)
    x8 = x8.reshape(200, 72)
    expected, _ = prune_layer(wide, channel_padding.pad_weight(w, 8), Statistics((x8.T @ x8)[None], 200), options)
    assert got.shape == w.shape
    np.testing.assert_allclose(got, expected[:, :6], rtol=1e-6, atol=1e-6)


def test_prune_auto_and_max_error_take_padded_layers(tmp_path):
    model = se_model()
    data = calibration(model, tmp_path, samples=32)
    pruned, report = prune_model(model, PruneOptions(method="auto", prune_head=True, pad_channels=True,
                                                     max_error=10.0), data)
    assert {layer.name for layer in report.layers} >= set(PADDED)  # E = 10 takes every layer
    for name in PADDED:
        assert group_counts(weights(pruned)[name]).max() <= 2


def test_prune_cli_pad_channels(tmp_path, capsys):
    source = tmp_path / "se.onnx"
    onnx.save(se_model(), source)
    out = tmp_path / "pruned.onnx"
    assert main(["prune", str(source), "-o", str(out), "--prune-head", "--pad-channels", "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["layers"]) == 7
    pruned = onnx.load(out)
    assert {t.name: list(t.dims) for t in pruned.graph.initializer} == \
        {t.name: list(t.dims) for t in se_model().graph.initializer}


# --- compile ----------------------------------------------------------------------------------------


def _pad_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if node.op_type == "Pad"]


@pytest.mark.kernels
@pytest.mark.parametrize("opset", [17, 10])
def test_compile_inserts_pad_and_runs_like_ort_on_the_original(pruned_model, opset):
    model = onnx.ModelProto()
    model.CopyFrom(pruned_model)
    model.opset_import[0].version = opset
    result = compile_model(model, pad_channels=True)
    assert sorted(d.record.node for d in result.rewritten) == sorted([*PADDED, "head"])
    assert {d.record.node: d.reason for d in result.left} == {
        "grouped": "C/group = 6 is not a multiple of 4; --pad-channels pads only Convs with group = 1"}
    pads = _pad_nodes(result.model)
    assert len(pads) == len(PADDED)
    if opset >= 11:
        assert all(len(node.input) == 2 for node in pads)
    else:
        assert all(len(node.input) == 1 and {a.name for a in node.attribute} >= {"pads", "mode"} for node in pads)
    readers = {name: node for node in result.model.graph.node for name in node.input}
    assert all(readers[pad.output[0]].op_type == "Conv2dCompress" for pad in pads)
    x = random_input((2, 3, 12, 12))
    dense = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = dense.run(None, {"x": x})[0]
    got = onnxsparse.InferenceSession(result.model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_compile_without_the_option_leaves_them_dense(pruned_model):
    result = compile_model(pruned_model)
    assert [d.record.node for d in result.rewritten] == ["head"]
    assert not _pad_nodes(result.model)


def test_compiled_weight_is_compressed_at_c4(pruned_model):
    result = compile_model(pruned_model, pad_channels=True)
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}
    sparse = next(n for n in result.model.graph.node if n.op_type == "Conv2dCompress" and n.name.startswith("reduce"))
    values, index = initializers[sparse.input[1]], initializers[sparse.input[2]]
    assert values.shape == (12, 52 // 2) and index.shape == (12, (52 + 7) // 8)
    decoded = fmt.decompress_weight(values, index, "oihw", (12, 52, 1, 1))
    np.testing.assert_array_equal(decoded[:, :50], weights(pruned_model)["reduce"])
    assert not decoded[:, 50:].any()


@pytest.mark.kernels
@pytest.mark.parametrize("fold", [True, False])
def test_compiled_model_runs_like_ort_on_the_original(pruned_model, fold):
    result = compile_model(pruned_model, fold=fold, pad_channels=True)
    x = random_input((2, 3, 12, 12))
    expected = ort.InferenceSession(pruned_model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    got = onnxsparse.InferenceSession(result.model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.kernels
def test_compile_cli_and_verify(pruned_model, tmp_path, capsys):
    source = tmp_path / "pruned.onnx"
    onnx.save(pruned_model, source)
    out = tmp_path / "compiled.onnx"
    assert main(["compile", str(source), "-o", str(out), "--pad-channels", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "rewrote 7 of 8 layers" in printed
    assert "reduce: Conv -> reduce_sparse" in printed and "after zero-padding C from 50 to 52" in printed
    assert len(_pad_nodes(onnx.load(out))) == len(PADDED)
    assert main(["verify", str(source), str(out)]) == 0


def test_tune_times_padded_convs_and_compile_target_follows(pruned_model, tmp_path, monkeypatch, capsys):
    """tune --pad-channels times the padded Convs as their own problems (key ``padC=``); compile
    --target --pad-channels then rewrites those measured faster and keeps the others dense."""
    from onnxsparse.hardware import host_key
    from onnxsparse.tune import TuneCache, tuner
    from onnxsparse.tune.timing import summarize

    timed = {}

    def fake_measure(layer, provider, options, budget_s, clock="wall", weight_bytes=0):
        p = layer.problem
        timed[layer.node] = p.key
        ratio = 1.3 if p.padded else 0.8  # padded layers faster, the others slower: the choice shows
        return {"problem": p.to_dict(), "base": p.base, "key": p.key, "clock": clock, "dense_us": 100.0,
                "sparse_us": 100.0 / ratio, "ratio": ratio, "ratio_low": ratio - 0.01, "ratio_high": ratio + 0.01,
                "pairs": 20, "copies": 1}

    monkeypatch.setattr(tuner, "measure_problem", fake_measure)
    monkeypatch.setattr(tuner, "_time_models", lambda *a, **k: summarize([1.1e-3] * 8, [1e-3] * 8))
    cache = TuneCache(tmp_path / "tune.json")
    tuner.tune_model(pruned_model, "cpu", 1, {"N": 2}, cache=cache, whole_model=False, pad_channels=True)
    assert {name for name, key in timed.items() if "padC=" in key} == set(PADDED)
    assert timed["reduce"].endswith("padC=52 x=2x50x12x12")
    source = tmp_path / "pruned.onnx"
    onnx.save(pruned_model, source)
    args = ["compile", str(source), "--target", "cpu", "--threads", "1", "--cache", str(tmp_path / "tune.json"),
            "--dim", "N=2", "--json", "-q"]
    assert main([*args, "--pad-channels", "-o", str(tmp_path / "a.onnx")]) == 0
    layers = {layer["node"]: layer for layer in json.loads(capsys.readouterr().out)["layers"]}
    assert all(layers[name]["rewritten"] for name in PADDED), {n: layers[n]["reason"] for n in PADDED}
    assert not layers["head"]["rewritten"] and "slower" in layers["head"]["reason"]
    assert len(_pad_nodes(onnx.load(tmp_path / "a.onnx"))) == len(PADDED)
    # Without --pad-channels the same Convs are SPEC's ineligible layers, whatever the cache holds.
    assert main([*args, "-o", str(tmp_path / "b.onnx")]) == 0
    layers = {layer["node"]: layer for layer in json.loads(capsys.readouterr().out)["layers"]}
    assert not any(layers[name]["rewritten"] for name in PADDED)
    assert "not a multiple of 4" in layers["reduce"]["reason"]


def test_tune_measures_a_padded_conv_for_real(pruned_model):
    """The single-layer pair of a padded Conv: a dense Conv on C = 50 against Pad + Conv2dCompress."""
    from onnxsparse.session import timing_options
    from onnxsparse.tune import tuner
    from onnxsparse.tune.problems import bind_inputs, find_problems, inferred_shapes

    bound = bind_inputs(pruned_model, {"N": 1})
    layers = {p.node: p for p in find_problems(pruned_model, check_model(pruned_model, pad_channels=True).layers,
                                                inferred_shapes(bound))}
    record = tuner.measure_problem(layers["reduce"], "cpu", lambda: timing_options(1), 0.05, "cpu")
    assert record["problem"]["padded"] == 52 and record["ratio"] > 0 and record["pairs"] >= 5


# --- the real model: PP-LCNet's orientation classifier (rapidocr) ----------------------------------


def cls_model_path():
    """The model file in the installed rapidocr package, found without importing it (CI installs the
    wheel with --no-deps, for its model files only, as benchmarks/prune_bench.py does)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.origin:
        pytest.skip("rapidocr (the PP-LCNet cls model's package) is not installed")
    path = Path(spec.origin).parent / "models" / "ch_ppocr_mobile_v2.0_cls_mobile.onnx"
    if not path.is_file():
        pytest.skip(f"{path.name} is not in the installed rapidocr")
    return path


@pytest.mark.kernels
def test_real_cls_model_prune_compile_verify(tmp_path, capsys):
    """The SE expand convs (C = 2, 10, 22, 26, 50) and the RGB stem (C = 3) become eligible: 61.5% of
    the weights without the option, 83.4% with it; the compiled model runs like the pruned one."""
    from onnxsparse.prune.layers import scan_layers, weight_params

    model = onnx.load(cls_model_path())
    total = weight_params(model)
    shares = [sum(layer.params for layer in scan_layers(model, prune_head=True, pad_channels=pad).layers) / total
              for pad in (False, True)]
    assert shares[0] == pytest.approx(0.615, abs=0.001) and shares[1] == pytest.approx(0.834, abs=0.001)
    pruned, report = prune_model(model, PruneOptions(method="magnitude", prune_head=True, pad_channels=True))
    assert {t.name: list(t.dims) for t in pruned.graph.initializer} == {t.name: list(t.dims) for t in model.graph.initializer}
    check = check_model(pruned, pad_channels=True)
    padded = [layer for layer in check.eligible if layer.padded_channels]
    assert sorted({layer.shape[1] for layer in padded}) == [2, 3, 10, 22, 26, 50]
    result = compile_model(pruned, pad_channels=True)
    assert len(_pad_nodes(result.model)) == len(padded)
    source, out = tmp_path / "pruned.onnx", tmp_path / "compiled.onnx"
    onnx.save(pruned, source)
    onnx.save(result.model, out)
    assert main(["verify", str(source), str(out), "-q"]) == 0
    capsys.readouterr()
    x = np.random.default_rng(0).random((2, 3, 48, 192), dtype=np.float32)
    name = model.graph.input[0].name
    expected = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
    got = onnxsparse.InferenceSession(result.model, providers=["CPUExecutionProvider"]).run(None, {name: x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.kernels
@pytest.mark.parametrize("opset", [17, 10])
def test_convs_reading_one_input_share_one_pad(opset):
    """Two group-1 Convs with C = 6 on the same X: one Pad serves both, placed before its first
    reader, and the model runs like the original."""
    rng = np.random.default_rng(5)
    text = f"""<ir_version: 8, opset_import: ["" : {opset}]> g (float[N,6,8,8] x) => (float[N,8,8,8] y) {{
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, wa)
        b = Conv <kernel_shape = [1, 1]> (x, wb)
        s = Add (a, b)
        y = Relu (s)
    }}"""
    model = make_model(text, wa=rng.standard_normal((8, 6, 3, 3)).astype(np.float32),
                       wb=rng.standard_normal((8, 6, 1, 1)).astype(np.float32))
    pruned, _ = prune_model(model, PruneOptions(method="magnitude", prune_head=True, pad_channels=True))
    result = compile_model(pruned, pad_channels=True)
    assert len(result.rewritten) == 2
    pads = _pad_nodes(result.model)
    assert len(pads) == 1
    readers = [node for node in result.model.graph.node if pads[0].output[0] in node.input]
    assert [node.op_type for node in readers] == ["Conv2dCompress", "Conv2dCompress"]
    order = [node.name for node in result.model.graph.node]
    assert order.index(pads[0].name) < min(order.index(node.name) for node in readers)
    x = random_input((2, 6, 8, 8))
    expected = ort.InferenceSession(pruned.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = onnxsparse.InferenceSession(result.model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
