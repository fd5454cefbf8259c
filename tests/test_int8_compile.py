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


# --- the compiler: quantized models -> the int8 ops ------------------------------------------------------
#
# Each model is built the way ONNX Runtime's quantizer writes it; the compiled model runs through the
# reference ops and is compared with ONNX Runtime's own run of the quantized model on the same input.

from onnxsparse.api import check_model, compile_model  # noqa: E402
from onnxsparse.spec import QUANT_SPARSE_OPS  # noqa: E402

X_SCALE = np.float32(0.02)
W_SCALE = 0.01
Y_SCALE = np.float32(0.05)


def _zero_point(dtype) -> np.ndarray:
    return np.array(128 if np.dtype(dtype) == np.uint8 else -3, dtype)


def _w_scale(rows: int, per_channel: bool, seed: int) -> np.ndarray:
    if not per_channel:
        return np.array(W_SCALE, np.float32)
    return (np.random.default_rng(seed).random(rows) * W_SCALE + W_SCALE / 2).astype(np.float32)


class Q:
    """A model under construction: nodes, initializers, graph inputs and outputs."""

    def __init__(self) -> None:
        self.nodes, self.inits, self.inputs, self.outputs = [], {}, [], []

    def init(self, name: str, value) -> str:
        self.inits[name] = np.asarray(value)
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], domain: str | None = None, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=f"{op.lower()}{len(self.nodes)}", domain=domain, **attrs))
        return outputs[0]

    def quantize_input(self, shape, adtype) -> str:
        """float x -> QuantizeLinear -> the quantized activation."""
        self.inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape)))
        return self.node("QuantizeLinear", ["x", self.init("x_scale", X_SCALE), self.init("x_zp", _zero_point(adtype))], ["x_q"])

    def model(self, opset: int = 21) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", self.inputs, self.outputs,
                                  [numpy_helper.from_array(v, k) for k, v in self.inits.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])
        model.ir_version = 10
        # Declare the outputs' shapes where ONNX infers them (onnx.checker wants a shape).
        graph = onnx.shape_inference.infer_shapes(model).graph
        inferred = {v.name: v for v in [*graph.value_info, *graph.output]}
        for out in model.graph.output:
            if out.name in inferred and inferred[out.name].type.tensor_type.HasField("shape"):
                out.type.CopyFrom(inferred[out.name].type)
        return model


def qdq_model(op="MatMul", m=3, k=16, n=5, per_channel=True, adtype=np.uint8, out_q=True, relu=False, bias=True,
              trans_b=1, a_rank=2, conv=None, weight=None, w_zp=None, axis=None, weight_dtype=np.int8,
              weight_from_input=False, float_activation=False, bias_identity=False, bias_scale=None,
              seed=0) -> tuple[onnx.ModelProto, dict]:
    """``x -> Q -> DQ -> op(., DQ(W)) [+ bias] [-> Relu] [-> Q]``, as quantize_static(QDQ) writes it.

    ``conv``: dict(c=, hw=, kernel=, group=, attrs) for a Conv; ``weight``/``w_zp``/``axis``/
    ``weight_dtype`` override the weight side for the negative cases. ``bias_identity``: the bias read
    through an Identity (a torch.onnx export sharing equal constants); ``bias_scale``: the bias's
    DequantizeLinear scale when it is not the accumulator's."""
    b = Q()
    rng = np.random.default_rng(seed)
    if op == "Conv":
        c, hw, (kh, kw), group = conv["c"], conv["hw"], conv["kernel"], conv.get("group", 1)
        layout, wshape, rows = "oihw", (n, c // group, kh, kw), n
        x_shape = (m, c, *hw)
    else:
        layout = "nk" if op == "Gemm" and trans_b else "kn"
        wshape, rows = ((n, k) if layout == "nk" else (k, n)), n
        x_shape = (m, k) if a_rank == 2 else ((2, m, k) if a_rank == 3 else (k,))
    w = int8_weight(wshape, layout, seed=seed + 1) if weight is None else weight
    ws = _w_scale(rows, per_channel, seed + 2)
    out_axis = 1 if layout == "kn" else 0
    dq_attrs = {"axis": out_axis if axis is None else axis} if (per_channel or axis is not None) else {}
    zp = np.zeros(ws.shape, weight_dtype) if w_zp is None else w_zp
    if weight_from_input:
        b.inputs.append(helper.make_tensor_value_info("W", helper.np_dtype_to_tensor_dtype(np.dtype(weight_dtype)), list(wshape)))
        w_name = "W"
    else:
        w_name = b.init("W", w.astype(weight_dtype))
    w_dq = b.node("DequantizeLinear", [w_name, b.init("w_scale", ws), b.init("w_zp", zp)], ["w_dq"], **dq_attrs)
    if float_activation:
        b.inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape)))
        a = "x"
    else:
        a = b.node("DequantizeLinear", [b.quantize_input(x_shape, adtype), "x_scale", "x_zp"], ["x_dq"])
    bias_q = rng.integers(-2000, 2000, rows).astype(np.int32)
    bias_s = (X_SCALE * ws).astype(np.float32) if bias_scale is None else np.asarray(bias_scale, np.float32)
    bias_dq = ["DequantizeLinear", [b.init("bias_q", bias_q), b.init("bias_scale", bias_s),
                                    b.init("bias_zp", np.zeros(bias_s.shape, np.int32))], ["bias"]]
    bias_attrs = {"axis": 0} if bias_s.size > 1 else {}
    if bias_identity:
        dq_node = b.node
        b.node = lambda op, inputs, outputs, **attrs: (  # noqa: E731 - the DequantizeLinear, then an Identity
            dq_node("Identity", [dq_node(op, inputs, outputs, **attrs)], [outputs[0] + "_shared"])
            if op == "DequantizeLinear" and outputs == ["bias"] else dq_node(op, inputs, outputs, **attrs))
    if op == "Conv":
        inputs = [a, w_dq] + ([b.node(*bias_dq, **bias_attrs)] if bias else [])
        y = b.node("Conv", inputs, ["y_f"], kernel_shape=[kh, kw], group=group, **conv.get("attrs", {}))
    elif op == "Gemm":
        inputs = [a, w_dq] + ([b.node(*bias_dq, **bias_attrs)] if bias else [])
        y = b.node("Gemm", inputs, ["y_f"], transB=trans_b)
    else:
        y = b.node("MatMul", [a, w_dq], ["y_f"])
        if bias:
            y = b.node("Add", [y, b.node(*bias_dq, **bias_attrs)], ["y_b"])
    if relu:
        y = b.node("Relu", [y], ["y_r"])
    if out_q:
        y = b.node("QuantizeLinear", [y, b.init("y_scale", Y_SCALE), b.init("y_zp", _zero_point(adtype))], ["y"])
        b.outputs.append(helper.make_tensor_value_info(y, helper.np_dtype_to_tensor_dtype(np.dtype(adtype)), None))
    else:
        b.outputs.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, None))
    feeds = {"x": (rng.random(x_shape) * 5 - 2.5).astype(np.float32)}
    if weight_from_input:
        feeds["W"] = w.astype(weight_dtype)
    return b.model(), feeds


def reference_run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    """The compiled model through the reference ops (ONNX's evaluator knows Q/DQ from opset 19 on)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = max(entry.version, 21)
    return run_reference(model, feeds)


def q_ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node if node.domain == "onnxsparse"]


def assert_matches_ort(quantized: onnx.ModelProto, compiled: onnx.ModelProto, feeds: dict, exact: bool = True):
    """The compiled model (reference ops) against ONNX Runtime's run of the quantized model: quantized
    outputs exactly (``exact``: where ONNX Runtime runs an integer op) or within one quantization step
    with at most 2% of the elements a step apart (where it runs the QDQ model's float op and rounds
    the float result); float outputs within fp32 rounding."""
    expected = ort_run(quantized, feeds)
    got = reference_run(compiled, feeds)
    for e, g in zip(expected, got):
        assert e.dtype == g.dtype and e.shape == g.shape
        if e.dtype.kind in "iu":
            steps = np.abs(e.astype(np.int64) - g.astype(np.int64))
            assert steps.max(initial=0) <= (0 if exact else 1), f"{steps.max()} quantization steps apart"
            assert (steps > 0).mean() <= 0.02, f"{(steps > 0).mean():.1%} of the elements are a step apart"
            if e.size > 4:
                assert len(np.unique(e)) > 3
        else:
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6 * np.abs(e).max(initial=1))


def compile_all(model: onnx.ModelProto, *ops: str):
    result = compile_model(model)
    assert [d.rewritten for d in result.layers] == [True] * len(result.layers), [d.reason for d in result.layers]
    assert q_ops(result.model) == list(ops)
    return result


@pytest.mark.parametrize("adtype", [np.uint8, np.int8])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
@pytest.mark.parametrize("out_q", [True, False])
def test_qdq_linear(op, per_channel, adtype, out_q):
    model, feeds = qdq_model(op, m=3, k=20, n=7, per_channel=per_channel, adtype=adtype, out_q=out_q)
    result = compile_all(model, "QMatMulCompress")
    node = next(n for n in result.model.graph.node if n.op_type == "QMatMulCompress")
    assert len(node.input) == (9 if out_q else 7)  # y_scale, y_zero_point only for a quantized output
    assert node.input[6] == "bias_q"  # the int32 bias as the quantizer wrote it
    if op == "MatMul":
        assert result.layers[0].fused_bias.startswith("add")
    assert {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in result.model.graph.node} == {"QuantizeLinear"}
    assert_matches_ort(model, result.model, feeds, exact=False)


@pytest.mark.parametrize("bias_scale", [None, 0.03], ids=["accumulator-scale", "other-scale"])
@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_qdq_bias_through_identity(op, bias_scale):
    """A bias read through an Identity after its DequantizeLinear (torch.onnx shares equal constants so,
    and the quantizer dequantizes before the Identity): folded as the op's bias, at the accumulator's
    scale as it is, at another scale requantized (half a step of the accumulator scale at most)."""
    model, feeds = qdq_model(op, m=3, k=20, n=7, bias_identity=True, bias_scale=bias_scale)
    assert "Identity" in {n.op_type for n in model.graph.node}
    result = compile_all(model, "QMatMulCompress")
    node = next(n for n in result.model.graph.node if n.op_type == "QMatMulCompress")
    if bias_scale is None:
        assert node.input[6] == "bias_q"
    else:
        assert node.input[6] and node.input[6] != "bias_q"  # a requantized int32 row
    assert "Add" not in {n.op_type for n in result.model.graph.node}
    if bias_scale is None:
        assert_matches_ort(model, result.model, feeds, exact=False)
        return
    # At another scale, ONNX Runtime's optimized run (1.32, CPU) fuses the bias as if it were at the
    # accumulator's scale; its unoptimized run computes what ONNX defines: compared with that one.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    expected = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = reference_run(result.model, feeds)[0]
    steps = np.abs(expected.astype(np.int64) - got.astype(np.int64))
    assert steps.max() <= 1 and (steps > 0).mean() <= 0.1, steps
    assert len(np.unique(expected)) > 3


@pytest.mark.parametrize("m,k,n,a_rank", [(1, 4, 1, 2), (5, 12, 3, 2), (7, 36, 9, 3), (1, 8, 6, 1), (33, 64, 17, 2)])
def test_qdq_matmul_odd_shapes(m, k, n, a_rank):
    model, feeds = qdq_model("MatMul", m=m, k=k, n=n, a_rank=a_rank, bias=False, seed=k)
    result = compile_all(model, "QMatMulCompress")
    assert_matches_ort(model, result.model, feeds, exact=False)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("out_q", [True, False])
def test_qdq_relu_is_the_op_activation(relu, out_q):
    model, feeds = qdq_model("MatMul", k=16, n=6, relu=relu, out_q=out_q, adtype=np.int8)
    result = compile_all(model, "QMatMulCompress")
    node = next(n for n in result.model.graph.node if n.op_type == "QMatMulCompress")
    assert [helper.get_attribute_value(a) for a in node.attribute if a.name == "activation"] == ([b"Relu"] if relu else [])
    assert "Relu" not in [n.op_type for n in result.model.graph.node]
    assert_matches_ort(model, result.model, feeds, exact=False)


CONV = {
    "3x3-pads": dict(c=8, hw=(7, 6), kernel=(3, 3), attrs=dict(pads=[1, 1, 1, 1])),
    "stride-dil-group": dict(c=8, hw=(9, 9), kernel=(3, 2), group=2, attrs=dict(strides=[2, 1], dilations=[1, 2], pads=[1, 0, 1, 1])),
    "same-upper": dict(c=12, hw=(5, 7), kernel=(3, 3), attrs=dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "1x1": dict(c=4, hw=(3, 3), kernel=(1, 1)),
}


@pytest.mark.parametrize("case", CONV)
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("adtype", [np.uint8, np.int8])
def test_qdq_conv(case, per_channel, adtype):
    model, feeds = qdq_model("Conv", m=2, n=6, conv=CONV[case], per_channel=per_channel, adtype=adtype, seed=3)
    result = compile_all(model, "QConv2dCompress")
    node = next(n for n in result.model.graph.node if n.op_type == "QConv2dCompress")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["kernel_shape"] == list(CONV[case]["kernel"])
    assert_matches_ort(model, result.model, feeds, exact=False)


def test_qdq_conv_float_output_with_relu():
    model, feeds = qdq_model("Conv", m=1, n=4, conv=CONV["3x3-pads"], out_q=False, relu=True)
    result = compile_all(model, "QConv2dCompress")
    assert_matches_ort(model, result.model, feeds, exact=False)
    assert (reference_run(result.model, feeds)[0] >= 0).all()


def test_qdq_weight_shared_by_two_layers_is_compressed_once():
    model, feeds = qdq_model("MatMul", k=16, n=6, bias=False)
    model.graph.node.extend([helper.make_node("MatMul", ["x_dq", "w_dq"], ["y2f"], name="second"),
                             helper.make_node("QuantizeLinear", ["y2f", "y_scale", "y_zp"], ["y2"])])
    model.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.UINT8, [3, 6]))
    result = compile_all(model, "QMatMulCompress", "QMatMulCompress")
    assert [(c.source, len(c.users)) for c in result.compressed] == [("W", 2)]
    assert "W" not in {t.name for t in result.model.graph.initializer}  # the dense int8 weight is gone
    assert_matches_ort(model, result.model, feeds, exact=False)


def test_qdq_layer_inside_an_if_branch():
    """The rules run in subgraph bodies too; the weight and scales are outer-scope initializers."""
    model, feeds = qdq_model("MatMul", k=16, n=6, bias=False)
    graph = model.graph
    inner = [n for n in graph.node if n.op_type == "MatMul" or (n.op_type == "QuantizeLinear" and n.output[0] == "y")]
    for node in inner:
        graph.node.remove(node)
    then_branch = helper.make_graph(inner, "then", [], [helper.make_tensor_value_info("y", TensorProto.UINT8, [3, 6])])
    else_branch = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["ye"])], "else", [],
                                    [helper.make_tensor_value_info("ye", TensorProto.UINT8, [3, 16])])
    graph.node.append(helper.make_node("If", ["c"], ["out"], then_branch=then_branch, else_branch=else_branch, name="if"))
    graph.input.append(helper.make_tensor_value_info("c", TensorProto.BOOL, []))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("out", TensorProto.UINT8, None))
    result = compile_model(model)
    assert [(d.record.scope, d.rewritten) for d in result.layers] == [("the then_branch of If 'if'", True)]
    body = next(a.g for a in next(n for n in result.model.graph.node if n.op_type == "If").attribute if a.name == "then_branch")
    assert [n.op_type for n in body.node] == ["QMatMulCompress"]
    for flag in (True, False):
        feeds["c"] = np.array(flag)
        np.testing.assert_array_equal(reference_run(result.model, feeds)[0], ort_run(model, feeds)[0])


def _reason(model: onnx.ModelProto) -> str:
    layers = check_model(model).layers
    assert len(layers) == 1 and not layers[0].eligible
    result = compile_model(model)
    assert q_ops(result.model) == [] and result.layers[0].reason == layers[0].reason
    return layers[0].reason


K, N = 16, 6
NOT_TWO_FOUR = np.ones((K, N), np.int8)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(w_zp=np.full(N, 3, np.int8)), "zero point of the weight's DequantizeLinear is not 0"),
    (dict(weight_dtype=np.uint8, w_zp=np.zeros(N, np.uint8)), "the weight is uint8"),
    (dict(axis=0, per_channel=True, n=K), "is not per tensor or per output feature (axis 1 of the weight)"),
    (dict(weight_from_input=True), "the int8 weight is not constant"),
    (dict(k=18, weight=np.zeros((18, N), np.int8)), "K = 18 is not a multiple of 4"),
    (dict(weight=NOT_TWO_FOUR), "100.0% of groups of 4 int8 values have more than 2 non-zeros"),
    (dict(float_activation=True), "weight-only int8 is not supported"),
])
def test_qdq_refusals(kwargs, fragment):
    kwargs = {"k": K, "n": N, **kwargs}
    model, _ = qdq_model("MatMul", bias=False, **kwargs)
    assert fragment in _reason(model)


def test_qdq_refusals_conv_and_gemm():
    conv1d = Q()
    x = conv1d.quantize_input((1, 8, 9), np.uint8)
    a = conv1d.node("DequantizeLinear", [x, "x_scale", "x_zp"], ["x_dq"])
    w = conv1d.node("DequantizeLinear", [conv1d.init("W", np.zeros((4, 8, 3), np.int8)), conv1d.init("ws", np.float32(0.1))], ["w_dq"])
    conv1d.node("Conv", [a, w], ["y"])
    conv1d.outputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    assert "only 2-D int8 Conv" in _reason(conv1d.model())

    model, _ = qdq_model("Gemm", bias=False)
    model.graph.node[-2].attribute.append(helper.make_attribute("alpha", 2.0))
    assert "alpha != 1" in _reason(model)


def test_non_constant_scale_is_refused():
    model, _ = qdq_model("MatMul", bias=False, per_channel=False)
    model.graph.input.append(helper.make_tensor_value_info("w_scale", TensorProto.FLOAT, []))
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "w_scale"))
    assert "weight scale of the weight's DequantizeLinear is not constant" in _reason(model)


def test_check_and_compile_json_show_quantized_layers(tmp_path):
    import json
    import subprocess
    import sys

    model, _ = qdq_model("MatMul", k=16, n=6)
    path = tmp_path / "q.onnx"
    onnx.save(model, path)
    run = lambda *a: subprocess.run([sys.executable, "-m", "onnxsparse", *map(str, a)], capture_output=True, text=True)  # noqa: E731
    checked = json.loads(run("check", path, "--json").stdout)
    layer = checked["layers"][0]
    assert (layer["quant"], layer["dtype"], layer["eligible"], layer["source"]) == ("QDQ", "int8", True, "W")
    compiled = json.loads(run("compile", path, "-o", tmp_path / "c.onnx", "--json").stdout)
    assert compiled["layers"][0]["rewritten"] and compiled["layers"][0]["fused_bias"].startswith("add")
    again = json.loads(run("check", tmp_path / "c.onnx", "--json").stdout)
    assert again["compiled"] == {"QMatMulCompress": 1} and again["layers"] == []


# --- QOperator forms --------------------------------------------------------------------------------------

def qlinear_model(op: str, per_channel=True, adtype=np.uint8, m=3, k=12, n=5, bias=True, y_scale=True, seed=0,
                  w_zp=None) -> tuple[onnx.ModelProto, dict]:
    """QLinearMatMul / QLinearConv / QGemm on a quantized input, the quantized output a graph output."""
    b = Q()
    rng = np.random.default_rng(seed)
    conv = op == "QLinearConv"
    x_shape = (1, k, 6, 5) if conv else (m, k)
    wshape, layout = {"QLinearMatMul": ((k, n), "kn"), "QLinearConv": ((n, k, 3, 3), "oihw"), "QGemm": ((n, k), "nk")}[op]
    ws = _w_scale(n, per_channel, seed)
    xq = b.quantize_input(x_shape, adtype)
    common = [xq, "x_scale", "x_zp", b.init("W", int8_weight(wshape, layout, seed)), b.init("w_scale", ws),
              b.init("w_zp", np.zeros(ws.shape, np.int8) if w_zp is None else w_zp)]
    ys = [b.init("y_scale", Y_SCALE), b.init("y_zp", _zero_point(adtype))] if y_scale else []
    bias_name = b.init("bias", rng.integers(-2000, 2000, n).astype(np.int32)) if bias else ""
    if op == "QLinearMatMul":
        b.node(op, common + ys, ["y"])
    elif op == "QLinearConv":
        b.node(op, common + ys + ([bias_name] if bias else []), ["y"], pads=[1, 1, 1, 1])
    else:
        b.node(op, common + [bias_name] + ys, ["y"], domain="com.microsoft", transB=1)
    out_type = adtype if y_scale else np.float32
    b.outputs.append(helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(np.dtype(out_type)), None))
    return b.model(), {"x": (rng.random(x_shape) * 5 - 2.5).astype(np.float32)}


@pytest.mark.parametrize("op", ["QLinearMatMul", "QLinearConv", "QGemm"])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("adtype", [np.uint8, np.int8])
def test_qlinear_ops(op, per_channel, adtype):
    model, feeds = qlinear_model(op, per_channel=per_channel, adtype=adtype)
    result = compile_all(model, "QConv2dCompress" if op == "QLinearConv" else "QMatMulCompress")
    assert result.layers[0].record.quant == op
    assert_matches_ort(model, result.model, feeds)


def test_qgemm_float_output():
    model, feeds = qlinear_model("QGemm", y_scale=False)
    result = compile_all(model, "QMatMulCompress")
    assert_matches_ort(model, result.model, feeds)


def test_qlinear_refusals():
    model, _ = qlinear_model("QLinearMatMul", w_zp=np.full(5, 1, np.int8))
    assert "zero point of QLinearMatMul is not 0" in _reason(model)
    model, _ = qlinear_model("QLinearConv", per_channel=False)
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "w_scale"))
    model.graph.initializer.append(numpy_helper.from_array(np.full((5, 1), 0.01, np.float32), "w_scale"))
    assert "is not per tensor or per output feature" in _reason(model)


def integer_model(op: str, per_channel=True, m=3, k=12, n=5, cast=True, scale_product=True, seed=0):
    """``DynamicQuantizeLinear -> MatMulInteger/ConvInteger -> Cast -> Mul(Mul(x_scale, w_scale))``, as
    quantize_dynamic writes it."""
    b = Q()
    conv = op == "ConvInteger"
    x_shape = (2, k, 5, 4) if conv else (m, k)
    wshape, layout = ((n, k, 3, 3), "oihw") if conv else ((k, n), "kn")
    ws = _w_scale(n, per_channel and not conv, seed)
    b.inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape)))
    b.node("DynamicQuantizeLinear", ["x"], ["x_q", "x_s", "x_zp"])
    w_zp = b.init("w_zp", np.zeros(ws.shape, np.int8))
    attrs = {"pads": [1, 1, 1, 1]} if conv else {}
    acc = b.node(op, ["x_q", b.init("W", int8_weight(wshape, layout, seed)), "x_zp", w_zp], ["acc"], **attrs)
    if not cast:
        b.outputs.append(helper.make_tensor_value_info(acc, TensorProto.INT32, None))
        return b.model(), {}
    f = b.node("Cast", [acc], ["acc_f"], to=TensorProto.FLOAT)
    s = b.node("Mul", ["x_s", b.init("w_scale", ws)], ["s"]) if scale_product else b.init("s", np.float32(0.001))
    b.node("Mul", [f, s], ["y"])
    b.outputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    rng = np.random.default_rng(seed)
    return b.model(), {"x": (rng.random(x_shape) * 5 - 2.5).astype(np.float32)}


@pytest.mark.parametrize("op", ["MatMulInteger", "ConvInteger"])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("scale_product", [True, False])
def test_integer_ops(op, per_channel, scale_product):
    model, feeds = integer_model(op, per_channel=per_channel, scale_product=scale_product)
    result = compile_all(model, "QConv2dCompress" if op == "ConvInteger" else "QMatMulCompress")
    assert "DynamicQuantizeLinear" in [n.op_type for n in result.model.graph.node]
    assert not {"Cast", "Mul", op} & {n.op_type for n in result.model.graph.node}
    assert_matches_ort(model, result.model, feeds)


def test_integer_op_without_scaling_is_refused():
    model, _ = integer_model("MatMulInteger", cast=False)
    assert "int32 output is not read by one Cast to float" in _reason(model)


# --- the compiled models on the library's int8 kernels ------------------------------------------------------

def _int8_kernels_missing() -> str | None:
    import onnxsparse

    model, _ = qlinear_model("QLinearMatMul")
    try:
        onnxsparse.InferenceSession(compile_model(model).model, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - the reason to skip
        return f"the custom-op library has no int8 kernels: {str(exc).splitlines()[0][:200]}"
    return None


KERNEL_CASES = {
    "qdq-matmul-bias-q": lambda: qdq_model("MatMul", m=5, k=20, n=7),
    "qdq-matmul-float-relu-int8": lambda: qdq_model("MatMul", k=16, n=6, out_q=False, relu=True, adtype=np.int8),
    "qdq-matmul-rank3-per-tensor": lambda: qdq_model("MatMul", m=3, k=12, n=5, a_rank=3, per_channel=False, bias=False),
    "qdq-gemm": lambda: qdq_model("Gemm", m=4, k=24, n=9),
    "qdq-conv": lambda: qdq_model("Conv", m=2, n=6, conv=CONV["stride-dil-group"], seed=3),
    "qdq-conv-float-relu": lambda: qdq_model("Conv", m=1, n=4, conv=CONV["3x3-pads"], out_q=False, relu=True),
    "qlinearmatmul": lambda: qlinear_model("QLinearMatMul", adtype=np.int8),
    "qlinearconv": lambda: qlinear_model("QLinearConv"),
    "qgemm-float": lambda: qlinear_model("QGemm", y_scale=False),
    "matmulinteger": lambda: integer_model("MatMulInteger"),
    "convinteger-constant-scale": lambda: integer_model("ConvInteger", scale_product=False),
}


@pytest.mark.kernels
@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("case", KERNEL_CASES)
def test_compiled_patterns_on_the_kernels(case, fold):
    """Each pattern's compiled model in ONNX Runtime with the library equals its reference run, and is
    within one step of ONNX Runtime's run of the quantized model (exact where ORT runs an integer op).
    ``fold=False``: the int8 weight is compressed by CompressOp in the session."""
    import onnxsparse

    missing = _int8_kernels_missing()
    if missing:
        pytest.skip(missing)
    model, feeds = KERNEL_CASES[case]()
    compiled = compile_model(model, fold=fold).model
    assert ("CompressOp" in [n.op_type for n in compiled.graph.node]) != fold
    got = onnxsparse.InferenceSession(compiled, providers=["CPUExecutionProvider"]).run(None, feeds)
    for g, r, e in zip(got, reference_run(compiled, feeds), ort_run(model, feeds)):
        assert g.dtype == r.dtype == e.dtype
        if g.dtype.kind in "iu":
            np.testing.assert_array_equal(g, r)
            assert np.abs(g.astype(np.int64) - e.astype(np.int64)).max() <= 1
        else:
            np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-6 * np.abs(r).max())
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * np.abs(e).max())


# --- tune and compile --target: int8 layers decided by measurement -------------------------------------------

@pytest.mark.kernels
@pytest.mark.parametrize("builder", ["qdq-matmul", "qlinearconv", "matmulinteger"])
def test_tune_times_int8_layers_and_compile_target_uses_them(tmp_path, builder):
    """``onnxsparse tune`` times an int8 layer as the form the model holds it in (dense: ONNX Runtime's
    own int8 execution; sparse: the compiled op), and ``compile --target cpu`` decides it from that
    measurement."""
    import json
    import subprocess
    import sys

    from onnxsparse.tune.problems import find_problems, inferred_shapes, layer_model

    missing = _int8_kernels_missing()
    if missing:
        pytest.skip(missing)
    model = {"qdq-matmul": lambda: qdq_model("MatMul", m=8, k=64, n=32)[0],
             "qlinearconv": lambda: qlinear_model("QLinearConv")[0],
             "matmulinteger": lambda: integer_model("MatMulInteger", m=8, k=64, n=32)[0]}[builder]()
    layers = find_problems(model, check_model(model).layers, inferred_shapes(model))
    assert len(layers) == 1 and layers[0].problem.dtype == "int8"
    dense = layer_model(layers[0], copies=2)
    assert {n.op_type for n in dense.graph.node} & {"QLinearConv", "MatMulInteger", "MatMul"}
    assert q_ops(compile_model(dense).model) == [("QConv2dCompress" if builder == "qlinearconv" else "QMatMulCompress")] * 2

    path, cache = tmp_path / "q.onnx", tmp_path / "tune.json"
    onnx.save(model, path)
    run = lambda *a: subprocess.run([sys.executable, "-m", "onnxsparse", *map(str, a)], capture_output=True, text=True)  # noqa: E731
    tuned = run("tune", path, "--provider", "cpu", "--threads", "1", "--cache", cache, "--budget", "0.2",
                "--no-whole-model", "--json", "--quiet")
    assert tuned.returncode == 0, tuned.stderr
    problems = json.loads(tuned.stdout)["problems"]
    assert len(problems) == 1 and " int8 " in problems[0]["problem"] and problems[0]["ratio"] > 0
    compiled = run("compile", path, "-o", tmp_path / "c.onnx", "--target", "cpu", "--threads", "1", "--cache", cache, "--json")
    assert compiled.returncode == 0, compiled.stderr
    layer = json.loads(compiled.stdout)["layers"][0]
    assert layer["decided_by"]["source"] == "tuned"
    assert layer["rewritten"] == layer["decided_by"]["sparse"]
    assert layer["decided_by"]["ratio"] == pytest.approx(problems[0]["ratio"], rel=1e-3)
