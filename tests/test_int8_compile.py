"""The int8 ops (docs/ops.md "int8 ops"): the Python reference against ONNX Runtime's own int8 ops.

``reference_ops.QMatMulCompress`` / ``QConv2dCompress`` are what the kernels are tested against, so
they are first checked here against ONNX Runtime's ``QLinearMatMul`` / ``QLinearConv`` (quantized
output) and ``MatMulInteger`` (the int32 accumulator), on the same int8 2:4 weights: exact.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from reference_ops import run_reference

from onnxsparse import format as fmt

OPSETS = [helper.make_opsetid("", 21), helper.make_opsetid("onnxsparse", 1)]


def _model(nodes, inputs, outputs, initializers: dict) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=OPSETS)
    model.ir_version = 10
    return model


def _io(name: str, dtype) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), None)


def ort_run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def int8_weight(shape, layout: str, seed: int) -> np.ndarray:
    """A random int8 weight pruned to 2:4 along SPEC's axis (the full range, -128 included)."""
    w = np.random.default_rng(seed).integers(-128, 128, shape).astype(np.int8)
    return fmt.prune_weight_magnitude(w, layout)


def activation(shape, dtype, seed: int) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(info.min, int(info.max) + 1, shape).astype(dtype)


def w_scales(n: int, per_channel: bool, seed: int) -> np.ndarray:
    if not per_channel:
        return np.array(0.004, np.float32)
    return (np.random.default_rng(seed).random(n) * 0.01 + 0.001).astype(np.float32)


# --- QMatMulCompress reference vs QLinearMatMul / MatMulInteger -------------------------------------------

@pytest.mark.parametrize("adtype", [np.uint8, np.int8])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("a_shape,k,n", [((5, 24), 24, 7), ((1, 8), 8, 1), ((2, 3, 12), 12, 9), ((33, 20), 20, 5)])
def test_reference_qmatmul_equals_qlinearmatmul(adtype, per_channel, a_shape, k, n):
    w = int8_weight((k, n), "kn", seed=k + n)
    a = activation(a_shape, adtype, seed=1)
    azp = np.array(131 if adtype == np.uint8 else -9, adtype)
    yzp = np.array(3 if adtype == np.uint8 else -4, adtype)
    ws = w_scales(n, per_channel, seed=2)
    common = {"as": np.array(0.02, np.float32), "azp": azp, "ws": ws, "ys": np.array(0.5, np.float32), "yzp": yzp}
    dense = _model([helper.make_node("QLinearMatMul", ["A", "as", "azp", "W", "ws", "wzp", "ys", "yzp"], ["Y"])],
                   [_io("A", adtype)], [_io("Y", adtype)], {**common, "W": w, "wzp": np.zeros(ws.shape, np.int8)})
    values, index = fmt.compress_weight(w, "kn")
    sparse = _model([helper.make_node("QMatMulCompress", ["A", "as", "azp", "v", "i", "ws", "", "ys", "yzp"], ["Y"],
                                      domain="onnxsparse")],
                    [_io("A", adtype)], [_io("Y", adtype)], {**common, "v": values, "i": index})
    expected = ort_run(dense, {"A": a})[0]
    got = run_reference(sparse, {"A": a})[0]
    assert got.dtype == adtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    if expected.size > 4:
        assert len(np.unique(expected)) > 3  # the output is not saturated flat


@pytest.mark.parametrize("per_channel", [False, True])
def test_reference_qmatmul_float_form_and_bias(per_channel):
    """Float output: float32(acc + bias) * fp32(a_scale * w_scale); acc from ORT's MatMulInteger."""
    k, n = 16, 6
    w = int8_weight((k, n), "kn", seed=5)
    a = activation((4, k), np.uint8, seed=6)
    ws = w_scales(n, per_channel, seed=7)
    bias = np.random.default_rng(8).integers(-3000, 3000, n).astype(np.int32)
    integer = _model([helper.make_node("MatMulInteger", ["A", "W", "azp"], ["Y"])],
                     [_io("A", np.uint8)], [_io("Y", np.int32)], {"W": w, "azp": np.array(120, np.uint8)})
    acc = ort_run(integer, {"A": a})[0] + bias
    values, index = fmt.compress_weight(w, "kn")
    inits = {"as": np.array(0.03, np.float32), "azp": np.array(120, np.uint8), "v": values, "i": index, "ws": ws, "b": bias}
    for act in ("", "Relu"):
        sparse = _model([helper.make_node("QMatMulCompress", ["A", "as", "azp", "v", "i", "ws", "b"], ["Y"],
                                          domain="onnxsparse", activation=act)],
                        [_io("A", np.uint8)], [_io("Y", np.float32)], inits)
        got = run_reference(sparse, {"A": a})[0]
        expected = acc.astype(np.float32) * (np.float32(0.03) * ws).astype(np.float32)
        if act:
            expected = np.maximum(expected, 0)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
        assert (got < 0).any() != bool(act)


def test_reference_qmatmul_rounds_half_to_even_and_saturates():
    """acc * m lands on .5 exactly: 2.5 -> 2, 3.5 -> 4, -2.5 -> -2; beyond the range it saturates."""
    w = np.array([[1], [0], [0], [0]], np.int8)  # K=4, N=1: acc = A[:, 0] - azp
    values, index = fmt.compress_weight(w, "kn")
    a = np.array([[5, 0, 0, 0], [7, 0, 0, 0], [-5, 0, 0, 0], [127, 0, 0, 0], [-128, 0, 0, 0]], np.int8)
    inits = {"as": np.array(1.0, np.float32), "azp": np.array(0, np.int8), "v": values, "i": index,
             "ws": np.array(1.0, np.float32), "ys": np.array(2.0, np.float32), "yzp": np.array(0, np.int8)}
    model = _model([helper.make_node("QMatMulCompress", ["A", "as", "azp", "v", "i", "ws", "", "ys", "yzp"], ["Y"],
                                     domain="onnxsparse")], [_io("A", np.int8)], [_io("Y", np.int8)], inits)
    got = run_reference(model, {"A": a})[0].ravel().tolist()
    assert got == [2, 4, -2, 64, -64]
    inits["ys"] = np.array(0.25, np.float32)  # x4: 127 * 4 saturates at 127, -128 * 4 at -128
    model = _model([helper.make_node("QMatMulCompress", ["A", "as", "azp", "v", "i", "ws", "", "ys", "yzp"], ["Y"],
                                     domain="onnxsparse")], [_io("A", np.int8)], [_io("Y", np.int8)], inits)
    assert run_reference(model, {"A": a})[0].ravel().tolist() == [20, 28, -20, 127, -128]


# --- QConv2dCompress reference vs QLinearConv -----------------------------------------------------------

CONV_CASES = {
    "pads-bias": dict(x=(2, 8, 9, 7), oc=6, k=(3, 3), group=1, attrs=dict(strides=[1, 1], pads=[1, 1, 1, 1])),
    "asym-pads-dil-stride": dict(x=(1, 8, 10, 9), oc=4, k=(3, 2), group=2,
                                 attrs=dict(strides=[2, 1], pads=[0, 1, 2, 0], dilations=[1, 2])),
    "same-upper-group": dict(x=(1, 16, 10, 9), oc=16, k=(3, 3), group=4, attrs=dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "same-lower": dict(x=(1, 16, 10, 9), oc=8, k=(3, 3), group=1, attrs=dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    "1x1-valid": dict(x=(1, 4, 5, 5), oc=3, k=(1, 1), group=1, attrs=dict(auto_pad="VALID")),
}


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("adtype", [np.uint8, np.int8])
@pytest.mark.parametrize("per_channel", [False, True])
def test_reference_qconv_equals_qlinearconv(case, adtype, per_channel):
    c = CONV_CASES[case]
    oc, (kh, kw), group = c["oc"], c["k"], c["group"]
    w = int8_weight((oc, c["x"][1] // group, kh, kw), "oihw", seed=oc + kh)
    x = activation(c["x"], adtype, seed=3)
    ws = w_scales(oc, per_channel, seed=4)
    bias = np.random.default_rng(5).integers(-5000, 5000, oc).astype(np.int32)
    common = {"as": np.array(0.02, np.float32), "azp": np.array(100 if adtype == np.uint8 else -7, adtype),
              "ws": ws, "b": bias, "ys": np.array(0.3, np.float32), "yzp": np.array(5 if adtype == np.uint8 else -3, adtype)}
    attrs = dict(kernel_shape=[kh, kw], group=group, **c["attrs"])
    dense = _model([helper.make_node("QLinearConv", ["X", "as", "azp", "W", "ws", "wzp", "ys", "yzp", "b"], ["Y"], **attrs)],
                   [_io("X", adtype)], [_io("Y", adtype)], {**common, "W": w, "wzp": np.zeros(ws.shape, np.int8)})
    values, index = fmt.compress_weight(w, "oihw")
    sparse = _model([helper.make_node("QConv2dCompress", ["X", "as", "azp", "v", "i", "ws", "b", "ys", "yzp"], ["Y"],
                                      domain="onnxsparse", **attrs)],
                    [_io("X", adtype)], [_io("Y", adtype)], {**common, "v": values, "i": index})
    expected = ort_run(dense, {"X": x})[0]
    got = run_reference(sparse, {"X": x})[0]
    assert got.dtype == adtype
    np.testing.assert_array_equal(got, expected)
    assert len(np.unique(expected)) > 3


def test_reference_compress_op_takes_int8():
    w = int8_weight((12, 5), "kn", seed=9)
    model = _model([helper.make_node("CompressOp", ["W"], ["v", "i"], domain="onnxsparse", layout="kn")],
                   [_io("W", np.int8)], [_io("v", np.int8), _io("i", np.uint8)], {})
    values, index = run_reference(model, {"W": w})
    assert values.dtype == np.int8 and values.shape == (5, 6) and index.shape == (5, 2)
    np.testing.assert_array_equal(fmt.decompress_weight(values, index, "kn", w.shape), w)
