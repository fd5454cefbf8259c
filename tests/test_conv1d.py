"""1-D Conv (``[N, C, L]``, audio models) compiled through the 2-D op with H=1.

Each case compiles a 1-D Conv with a 2:4 weight and compares the compiled model with ONNX Runtime's
dense Conv on the same input: through the Python reference of the ops always, and in ONNX Runtime
with the custom-op library in the tests marked ``kernels``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import make_model, random_input, sparse_weight
from reference_ops import run_reference

import onnxsparse
from onnxsparse.api import check_model, compile_model


def weight_1d(oc: int, c: int, kw: int, seed: int = 4) -> np.ndarray:
    """``[OC, C, KW]``, 2:4 along C at each kernel position (SPEC's Conv axis)."""
    return sparse_weight((oc, c, 1, kw), "oihw", seed=seed)[:, :, 0, :]


def conv1d_model(attrs: str = "", c: int = 8, oc: int = 6, kw: int = 3, length: int = 17, group: int = 1,
                 bias: bool = True, opset: int = 17, dtype: str = "float") -> onnx.ModelProto:
    np_dtype = np.float16 if dtype == "float16" else np.float32
    inits = {"W": weight_1d(oc, c // group, kw).astype(np_dtype)}
    if bias:
        inits["B"] = random_input((oc,), seed=9).astype(np_dtype)
    b_arg = ", B" if bias else ""
    head = f'<ir_version: 8, opset_import: ["" : {opset}]>'
    text = f"{head} g ({dtype}[2,{c},{length}] x) => ({dtype}[2,{oc},?] y) {{ y = Conv{attrs}(x, W{b_arg}) }}"
    return make_model(text, **inits)


CASES = {
    "plain": ("", {}),
    "no_bias": ("", {"bias": False}),
    "pads": ("<pads = [1, 2]>", {}),
    "strides": ("<strides = [2]>", {}),
    "dilations": ("<dilations = [2], pads = [2, 2]>", {}),
    "all": ("<strides = [3], dilations = [2], pads = [0, 3]>", {}),
    "group": ("<group = 2>", {"c": 16, "oc": 6, "group": 2}),
    "grouped_strided": ("<group = 2, strides = [2]>", {"c": 8, "oc": 4, "group": 2}),
    "same_upper": ('<auto_pad = "SAME_UPPER", strides = [2]>', {}),
    "same_lower": ('<auto_pad = "SAME_LOWER", kernel_shape = [4]>', {"kw": 4}),
    "valid": ('<auto_pad = "VALID">', {}),
    "kernel_1": ("", {"kw": 1}),
    "opset_11": ("<pads = [1, 1]>", {"opset": 11}),
}


def dense(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("case", list(CASES))
def test_conv1d_is_rewritten_through_the_2d_op(case):
    attrs, options = CASES[case]
    model = conv1d_model(attrs, **options)
    result = compile_model(model)
    assert [layer.rewritten for layer in result.layers] == [True], result.layers[0].reason
    ops = [node.op_type for node in result.model.graph.node]
    assert ops == ["Unsqueeze", "Conv2dCompress", "Squeeze"]
    sparse = result.model.graph.node[1]
    kernel = next(a for a in sparse.attribute if a.name == "kernel_shape")
    assert list(kernel.ints) == [1, options.get("kw", 3)]
    if options.get("opset", 17) < 13:  # axes is an attribute before opset 13
        assert [a.name for a in result.model.graph.node[0].attribute] == ["axes"]
    x = random_input((2, options.get("c", 8), 17))
    expected = dense(model, x)
    got = run_reference(result.model, {"x": x})[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.kernels
@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_conv1d_runs_like_ort_dense_conv(case, fold):
    attrs, options = CASES[case]
    model = conv1d_model(attrs, **options)
    compiled = compile_model(model, fold=fold).model
    x = random_input((2, options.get("c", 8), 17))
    got = onnxsparse.InferenceSession(compiled, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, dense(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.kernels
def test_conv1d_float16_runs_like_ort_dense_conv():
    model = conv1d_model("<pads = [1, 1]>", dtype="float16")
    compiled = compile_model(model).model
    x = random_input((2, 8, 17)).astype(np.float16)
    got = onnxsparse.InferenceSession(compiled, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    expected = dense(model, x).astype(np.float32)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), expected, rtol=1e-2, atol=1e-2)


def test_conv1d_output_shapes_are_annotated():
    compiled = compile_model(conv1d_model("<strides = [2]>")).model
    shapes = {value.name: [d.dim_value for d in value.type.tensor_type.shape.dim] for value in compiled.graph.value_info}
    sparse = compiled.graph.node[1]
    assert shapes[sparse.input[0]] == [2, 8, 1, 17]
    assert shapes[sparse.output[0]] == [2, 6, 1, 8]


def test_conv1d_weight_shared_by_two_convs_is_compressed_once():
    w = weight_1d(6, 8, 3)
    model = make_model(
        """<ir_version: 8, opset_import: ["" : 17]> g (float[1,8,9] x) => (float[1,6,7] y, float[1,6,9] z) {
        y = Conv(x, W)
        z = Conv<pads = [1, 1]>(x, W) }""",
        W=w,
    )
    result = compile_model(model)
    assert [layer.rewritten for layer in result.layers] == [True, True]
    assert len(result.compressed) == 1 and len(result.compressed[0].users) == 2
    assert "W" not in {tensor.name for tensor in result.model.graph.initializer}


def test_conv1d_channels_not_a_multiple_of_4_keep_the_reason():
    model = make_model(
        """<ir_version: 8, opset_import: ["" : 17]> g (float[1,6,9] x) => (float[1,4,7] y) { y = Conv(x, W) }""",
        W=np.zeros((4, 6, 3), np.float32),
    )
    (layer,) = check_model(model).layers
    assert not layer.eligible and layer.reason == "C/group = 6 is not a multiple of 4"


def test_conv1d_not_2_4_is_refused_with_the_share():
    w = np.ones((4, 8, 3), np.float32)
    model = make_model(
        """<ir_version: 8, opset_import: ["" : 17]> g (float[1,8,9] x) => (float[1,4,7] y) { y = Conv(x, W) }""", W=w
    )
    (layer,) = check_model(model).layers
    assert not layer.eligible and layer.reason == "100.0% of groups have more than 2 non-zeros"


def test_find_layers_reports_conv1d_only_to_callers_that_ask():
    from onnxsparse.compiler import ModelGraph, find_layers

    graph = ModelGraph(conv1d_model())
    (default,) = find_layers(graph)
    assert default.layout is None and default.reason.startswith("Conv is 1-D")
    (opted,) = find_layers(graph, conv1d=True)
    assert opted.layout == "oihw" and opted.shape == (6, 8, 3) and opted.reason is None
