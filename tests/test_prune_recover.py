"""``prune --recover``: the pruned model distilled towards the dense one (onnxsparse/prune/recover.py).

The torch interpreter of the graph must compute what ONNX Runtime computes; the training must keep
every pruned zero (the layers stay 2:4), lower the held-out error, and be kept only when it does."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from test_prune_holdout import cli, correlated, mlp

from onnxsparse import format as fmt
from onnxsparse.errors import OnnxSparseError
from onnxsparse.prune import Calibration, PruneOptions, prune_model
from onnxsparse.prune.evaluate import ReferenceOutputs
from onnxsparse.prune.holdout import split_calibration

torch = pytest.importorskip("torch", reason="--recover needs torch (CI installs the CPU build)")
from onnxsparse.prune.recover import TorchGraph, recover  # noqa: E402


def small_cnn(seed: int = 0) -> onnx.ModelProto:
    """A PP-LCNet-like block: Conv (weights in Constant nodes, as Paddle exports) + BatchNormalization +
    hard-swish from Add/Clip/Mul/Div, a squeeze-excitation (GlobalAveragePool, Conv with a bias,
    HardSigmoid, Mul), MaxPool, a Reshape whose shape comes from Shape/Slice/Cast/Concat, MatMul,
    Softmax."""
    rng = np.random.default_rng(seed)

    def const(name, array):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(array), name))

    f = np.float32
    nodes = [
        const("w1", (rng.standard_normal((16, 8, 3, 3)) * 0.3).astype(f)),
        const("s1", (1 + 0.1 * rng.standard_normal(16)).astype(f)), const("o1", (0.1 * rng.standard_normal(16)).astype(f)),
        const("m1", (0.1 * rng.standard_normal(16)).astype(f)), const("v1", (1 + 0.1 * rng.random(16)).astype(f)),
        const("three", np.array(3.0, f)), const("zero", np.array(0.0, f)), const("six", np.array(6.0, f)),
        const("w2", (rng.standard_normal((16, 16, 1, 1)) * 0.3).astype(f)), const("b2", (0.1 * rng.standard_normal(16)).astype(f)),
        const("fc", (rng.standard_normal((64, 3)) * 0.3).astype(f)),
        const("start", np.array([0], np.int64)), const("end", np.array([1], np.int64)),
        const("rest", np.array([-1], np.int64)),
        helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c1", "s1", "o1", "m1", "v1"], ["bn"], epsilon=1e-5),
        helper.make_node("Add", ["bn", "three"], ["a3"]),
        helper.make_node("Clip", ["a3", "zero", "six"], ["cl"]),
        helper.make_node("Mul", ["bn", "cl"], ["mu"]),
        helper.make_node("Div", ["mu", "six"], ["hs"]),
        helper.make_node("GlobalAveragePool", ["hs"], ["gap"]),
        helper.make_node("Conv", ["gap", "w2", "b2"], ["se"], kernel_shape=[1, 1]),
        helper.make_node("HardSigmoid", ["se"], ["hsig"], alpha=0.2, beta=0.5),
        helper.make_node("Mul", ["hs", "hsig"], ["scaled"]),
        helper.make_node("MaxPool", ["scaled"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Relu", ["pool"], ["r"]),
        helper.make_node("Shape", ["r"], ["shape"]),
        helper.make_node("Slice", ["shape", "start", "end"], ["batch"]),
        helper.make_node("Cast", ["batch"], ["batch64"], to=7),
        helper.make_node("Concat", ["batch64", "rest"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["r", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1),
    ]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [-1, 8, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [-1, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def run_ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("make", [small_cnn, lambda: mlp(widths=(32, 64, 32, 10))], ids=["cnn", "mlp"])
def test_torch_graph_computes_what_onnxruntime_does(make):
    model = make()
    name = model.graph.input[0].name
    shape = [5] + [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        got = TorchGraph(model)({name: x})[0].numpy()
    np.testing.assert_allclose(got, run_ort(model, {name: x})[0], rtol=1e-5, atol=1e-6)


def test_unsupported_operator_is_refused_with_its_name():
    model = mlp()
    model.graph.node[1].op_type = "Selu"  # the Relu
    with pytest.raises(OnnxSparseError, match="cannot run: Selu"):
        TorchGraph(model)


def _pruned(tmp_path, **extra):
    model = mlp(widths=(32, 64, 64, 10), seed=2)
    calib = Calibration(model, correlated(tmp_path / "c.npz", rows=256), batch_size=16)
    options = PruneOptions(method="magnitude", prune_head=True, **extra)
    return model, calib, options


def test_recover_keeps_the_zeros_and_lowers_the_held_out_error(tmp_path):
    model, calib, options = _pruned(tmp_path)
    one_shot, _ = prune_model(model, options)  # no data: the one-shot weights
    split = split_calibration(calib)
    trained = recover(model, one_shot, ["w0", "w1", "w2"], split.fit, steps=300, lr=3e-3)
    weights = {t.name: numpy_helper.to_array(t) for t in trained.graph.initializer}
    before = {t.name: numpy_helper.to_array(t) for t in one_shot.graph.initializer}
    for name in ("w0", "w1", "w2"):
        assert np.all(weights[name][before[name] == 0] == 0), f"{name}: a pruned zero was trained"
        assert not np.array_equal(weights[name], before[name])
        values, index = fmt.compress_weight(weights[name], "kn")  # still 2:4 along K
        np.testing.assert_array_equal(fmt.decompress_weight(values, index, "kn", weights[name].shape), weights[name])
    held = ReferenceOutputs(model, split.held)
    assert held.error_of_model(trained).rel_l2 < 0.5 * held.error_of_model(one_shot).rel_l2


def test_prune_recover_reports_and_keeps_the_better_model(tmp_path):
    model, calib, options = _pruned(tmp_path, recover=300, recover_lr=3e-3)
    pruned, report = prune_model(model, options, calib)
    r = report.recovery
    assert r["kept"] and r["held_out_after"]["relative_l2"] < r["held_out_before"]["relative_l2"]
    # the reported held-out error is the recovered model's, measured again independently
    check = ReferenceOutputs(model, split_calibration(calib).held).error_of_model(pruned)
    assert report.output_error.rel_l2 == pytest.approx(check.rel_l2) == pytest.approx(r["held_out_after"]["relative_l2"])
    assert report.to_json()["recovery"]["steps"] == 300


def test_prune_recover_under_max_error_still_holds_the_budget(tmp_path):
    model, calib, options = _pruned(tmp_path, recover=200, recover_lr=3e-3, max_error=0.45)
    pruned, report = prune_model(model, options, calib)
    assert report.layers and report.output_error.rel_l2 <= 0.45 and report.output_error_selection.rel_l2 <= 0.45
    # the greedy chose on one-shot errors; the recovery only lowered the selection data's error
    chosen = [step for step in report.selection if step["kept"]][-1]
    assert report.recovery["held_out_after"]["relative_l2"] < chosen["relative_l2"]


def test_a_diverging_recovery_is_not_kept(tmp_path):
    model, calib, options = _pruned(tmp_path, recover=30, recover_lr=1e6)
    one_shot, _ = prune_model(model, PruneOptions(method="magnitude", prune_head=True), calib)
    pruned, report = prune_model(model, options, calib)
    assert not report.recovery["kept"] and "did not lower" in report.note
    for a, b in zip(pruned.graph.initializer, one_shot.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def test_recover_cli(tmp_path):
    model = mlp(widths=(32, 64, 64, 10), seed=2)
    onnx.save(model, tmp_path / "m.onnx")
    data = correlated(tmp_path / "c.npz", rows=128)
    result = cli("prune", tmp_path / "m.onnx", "-o", tmp_path / "o.onnx", "--calib", data, "--prune-head",
                 "--recover", "100", "--recover-lr", "0.003", "-q")
    assert result.returncode == 0, result.stderr
    assert "recovery: 100 steps at learning rate 0.003" in result.stdout
    for bad, message in ((["--recover", "-1"], "--recover must be >= 0"), (["--recover-lr", "0", "--recover", "5"],
                                                                             "--recover-lr a positive number")):
        result = cli("prune", tmp_path / "m.onnx", "-o", tmp_path / "x.onnx", "--calib", data, *bad, "-q")
        assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.onnx").exists()


def _one_node(op: str, inputs: dict[str, np.ndarray], consts: dict[str, np.ndarray] | None = None,
              opset: int = 17, **attrs) -> tuple[onnx.ModelProto, dict]:
    consts = consts or {}
    node = helper.make_node(op, [*inputs, *consts], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "one", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                        for n, a in inputs.items()],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, n) for n, a in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8), inputs


_R = np.random.default_rng(3)
_X = _R.standard_normal((2, 4, 7, 9)).astype(np.float32)
CASES = {
    "Erf": lambda: _one_node("Erf", {"x": _X}),
    "Sqrt": lambda: _one_node("Sqrt", {"x": np.abs(_X)}),
    "Exp": lambda: _one_node("Exp", {"x": _X}),
    "Pow": lambda: _one_node("Pow", {"x": np.abs(_X)}, {"e": np.array(2.5, np.float32)}),
    "Max": lambda: _one_node("Max", {"x": _X}, {"z": np.zeros((9,), np.float32)}),
    "ReduceSum": lambda: _one_node("ReduceSum", {"x": _X}, {"axes": np.array([1, 3], np.int64)}, keepdims=0),
    "ReduceMax": lambda: _one_node("ReduceMax", {"x": _X}, opset=13, axes=[2]),
    "GlobalMaxPool": lambda: _one_node("GlobalMaxPool", {"x": _X}),
    "LayerNormalization": lambda: _one_node("LayerNormalization", {"x": _X}, {
        "g": _R.standard_normal(9).astype(np.float32), "b": _R.standard_normal(9).astype(np.float32)}, epsilon=1e-5),
    "Expand": lambda: _one_node("Expand", {"x": _X[:, :1]}, {"s": np.array([2, 4, 7, 9], np.int64)}),
    "Squeeze": lambda: _one_node("Squeeze", {"x": _X[:, :1, :, :1]}, {"a": np.array([1, -1], np.int64)}),
    "Squeeze every 1": lambda: _one_node("Squeeze", {"x": _X[:, :1, :, :1]}),
    "MaxPool SAME_UPPER": lambda: _one_node("MaxPool", {"x": _X}, kernel_shape=[2, 2], strides=[1, 1],
                                            auto_pad="SAME_UPPER"),
    "Conv SAME_UPPER stride 2": lambda: _one_node("Conv", {"x": _X}, {"w": _R.standard_normal((6, 4, 3, 3)).astype(
        np.float32)}, kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    "Conv asymmetric pads": lambda: _one_node("Conv", {"x": _X}, {"w": _R.standard_normal((6, 4, 3, 2)).astype(
        np.float32)}, kernel_shape=[3, 2], pads=[2, 0, 1, 1]),
}


@pytest.mark.parametrize("case", CASES)
def test_each_operator_as_onnxruntime_computes_it(case):
    model, feeds = CASES[case]()
    with torch.no_grad():
        got = TorchGraph(model)(feeds)[0].numpy()
    np.testing.assert_allclose(got, run_ort(model, feeds)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["ch_ppocr_mobile_v2.0_cls_mobile.onnx", "PP-OCRv6_rec_small.onnx"])
def test_real_models_run_as_onnxruntime_runs_them(name):
    """rapidocr's orientation classifier and text recognizer (third-party exports: weights in Constant
    nodes, SAME_UPPER convs and pools, LayerNormalization from its parts) through the interpreter."""
    from test_pad_channels import cls_model_path

    path = cls_model_path().with_name(name)
    if not path.is_file():
        pytest.skip(f"{name} is not in the installed rapidocr")
    model = onnx.load(path)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 48, 192 if "cls" in name else 320)).astype(np.float32)
    feeds = {model.graph.input[0].name: x}
    with torch.no_grad():
        got = TorchGraph(model)(feeds)[0].numpy()
    np.testing.assert_allclose(got, run_ort(model, feeds)[0], rtol=1e-4, atol=1e-4)


def test_a_float16_model_is_trained_in_float32_and_written_back_in_float16(tmp_path):
    """Weights in float16 between Casts (input float32 -> float16 -> ... -> float32): trained in
    float32, written back in float16 with the pruned zeros, the held-out error lower."""
    model = mlp(widths=(32, 64, 64, 10), seed=2)
    graph = model.graph
    for init in graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    graph.node[0].input[0] = "x16"
    graph.node.insert(0, helper.make_node("Cast", ["x"], ["x16"], to=onnx.TensorProto.FLOAT16))
    last = graph.node[-1]  # the Identity to y
    last.output[0] = "y16"
    graph.node.append(helper.make_node("Cast", ["y16"], ["y"], to=onnx.TensorProto.FLOAT))
    calib = Calibration(model, correlated(tmp_path / "c.npz", rows=256), batch_size=16)
    options = PruneOptions(method="magnitude", prune_head=True, recover=300, recover_lr=3e-3)
    pruned, report = prune_model(model, options, calib)
    assert report.recovery["kept"]
    assert report.recovery["held_out_after"]["relative_l2"] < 0.7 * report.recovery["held_out_before"]["relative_l2"]
    for init in pruned.graph.initializer:
        w = numpy_helper.to_array(init)
        assert w.dtype == np.float16
        values, index = fmt.compress_weight(w, "kn")  # still 2:4 along K
        np.testing.assert_array_equal(fmt.decompress_weight(values, index, "kn", w.shape), w)
