"""NaN and infinity in the activations (docs/semantics.md): a compiled op's outputs are NaN, +Inf
and -Inf exactly where ONNX Runtime's dense MatMul/Gemm/Conv on the decompressed weight puts them
(the dense op multiplies a non-finite input by the pruned zeros too: 0 * NaN = 0 * Inf = NaN), and
its finite outputs are the dense ones within rounding.

Each case runs the constant-weight model (fast kernels, every CPU path this processor has) and the
fed-weight model (generic kernel), in fp32, fp16 and bf16 (bf16 through Casts: numpy has none).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnxruntime as ort
import pytest

import onnxsparse
from onnxsparse import format as fmt

from conftest import ISA_FLAGS, force_cpu_isa

pytestmark = pytest.mark.kernels

CPU = ["CPUExecutionProvider"]
TYPE_NAMES = {np.dtype(np.float32): "float", np.dtype(np.float16): "float16", np.dtype(np.uint8): "uint8"}


@pytest.fixture(params=list(ISA_FLAGS))
def isa(request, monkeypatch):
    return force_cpu_isa(request.param, monkeypatch)


def build(body: str, feeds: dict[str, np.ndarray], consts: dict[str, np.ndarray],
          out_type: str = "float") -> onnx.ModelProto:
    ins = ", ".join(f"{TYPE_NAMES[a.dtype]}[{', '.join(map(str, a.shape))}] {n}" for n, a in feeds.items())
    model = onnx.parser.parse_model(f'<ir_version: 10, opset_import: ["" : 17, "onnxsparse" : 1]>\n'
                                    f"g ({ins}) => ({out_type} Y) {{ {body} }}")
    model.graph.output[0].type.tensor_type.ClearField("shape")
    model.graph.initializer.extend(onnx.numpy_helper.from_array(a, n) for n, a in consts.items())
    return model


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], sparse: bool) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    if sparse:
        session = onnxsparse.InferenceSession(model, sess_options=options, providers=CPU)
    else:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=CPU)
    return session.run(None, feeds)[0]


def sprinkle(rng, x: np.ndarray, count: int) -> np.ndarray:
    """x with NaN, +Inf and -Inf at `count` random places, and one lone +Inf (so that some outputs
    are infinite rather than NaN: those whose weight keeps that input)."""
    flat = x.reshape(-1).copy()
    places = rng.choice(flat.size, size=min(count + 1, flat.size), replace=False)
    flat[places[:-1]] = rng.choice(np.array([np.nan, np.inf, -np.inf], np.float32), size=len(places) - 1)
    flat[places[-1]] = np.inf
    return flat.reshape(x.shape)


def assert_same_nonfinite(y: np.ndarray, expected: np.ndarray, rtol: float) -> None:
    y = y.astype(np.float64)
    for name, test in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
        diff = np.argwhere(test(y) != test(expected))
        assert diff.size == 0, f"{len(diff)} outputs differ in {name} from the dense op, e.g. at {diff[:5].tolist()}"
    finite = np.isfinite(expected)
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    np.testing.assert_allclose(y[finite], expected[finite], rtol=rtol, atol=rtol * scale)


def dtype_body(dtype: str, op_line: str, inputs: list[str]) -> tuple[str, str]:
    """bfloat16 runs between Casts (inputs float -> bf16, output back); float16/float run as they are."""
    if dtype != "bfloat16":
        return op_line, ""
    casts = "\n".join(f"{name}16 = Cast <to = 16> ({name})" for name in inputs)
    return casts + "\n" + op_line.replace("Y =", "y16 =") + "\nY = Cast <to = 1> (y16)", "16"


DTYPES = {"float": (np.float32, 1e-4), "float16": (np.float16, 1e-2), "bfloat16": (np.float32, 3e-2)}


def round_bf16(a: np.ndarray) -> np.ndarray:
    bits = a.astype(np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    out = rounded.view(np.float32)
    return np.where(np.isnan(a), np.float32(np.nan), out)


def matmul_models(dtype: str, m: int, k: int, n: int, trans_a: int, seed: int):
    """A with NaN/Inf, and the dense Gemm, the constant-weight and the fed-weight MatMulCompress
    models of one case: (a, values, index, dense, const, fed, rtol). Also used by the CUDA tests."""
    np_dtype, rtol = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    w = fmt.prune_weight_magnitude(rng.standard_normal((k, n)).astype(np.float32), "kn")
    # A few groups keep a single non-zero: the other slot stores a zero, which multiplies as dense.
    w[:4, :3] = 0.0
    w[0, :3] = 1.5
    # (a single row gets the lone +Inf only, else a NaN would make the whole row NaN)
    a = sprinkle(rng, rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32),
                 m * k // 50 if m > 1 else 0)
    bias = rng.standard_normal(n).astype(np.float32)
    values, index = fmt.compress_weight(w.astype(np_dtype), "kn")
    if dtype == "bfloat16":
        a, values, w, bias = round_bf16(a), round_bf16(values), round_bf16(w), round_bf16(bias)
    a = a.astype(np_dtype)
    bias = bias.astype(np_dtype)
    op_line, sfx = dtype_body(dtype, f"Y = onnxsparse.MatMulCompress <alpha = 0.5, transA = {trans_a}> "
                                     f"(A, values, index, bias)", ["A", "values", "bias"])
    op_line = op_line.replace("(A, values, index, bias)", f"(A{sfx}, values{sfx}, index, bias{sfx})")
    dense = build(f"Y = Gemm <alpha = 0.5, transA = {trans_a}> (A, W, bias)", {"A": a.astype(np.float32)},
                  {"W": w.astype(np_dtype).astype(np.float32), "bias": bias.astype(np.float32)})
    out_type = "float16" if dtype == "float16" else "float"
    const = build(op_line, {"A": a}, {"values": values, "index": index, "bias": bias}, out_type)
    fed = build(op_line, {"A": a, "values": values, "index": index}, {"bias": bias}, out_type)
    return a, values, index, dense, const, fed, rtol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n,trans_a", [(1, 64, 40, 0), (5, 36, 17, 0), (64, 132, 70, 0), (20, 72, 33, 1)])
def test_matmul_nonfinite_like_dense(isa, dtype, m, k, n, trans_a):
    a, values, index, dense, const, fed, rtol = matmul_models(dtype, m, k, n, trans_a, m * 1000 + k + n)
    expected = run(dense, {"A": a.astype(np.float32)}, sparse=False).astype(np.float64)
    assert np.isnan(expected).any() and np.isinf(expected).any()  # the case tests both
    for model, feeds in ((const, {"A": a}), (fed, {"A": a, "values": values, "index": index})):
        y = run(model, feeds, sparse=True)
        assert_same_nonfinite(y, expected, rtol)


CONV_CASES = {
    # name: (N, C, OC, H, W, kernel, attributes)
    "3x3_padded": (2, 8, 40, 7, 6, (3, 3), "pads = [1, 1, 1, 1]"),
    "1x1": (1, 16, 33, 5, 5, (1, 1), ""),
    "strided_dilated": (1, 8, 20, 11, 9, (3, 2), "strides = [2, 1], dilations = [2, 2], pads = [2, 0, 1, 1]"),
    "grouped_same": (2, 16, 12, 6, 7, (3, 3), 'group = 2, auto_pad = "SAME_UPPER", strides = [2, 2]'),
    # 1024 output pixels: on CUDA, cuSPARSELt's product (its ReLU epilogue with layout "NHWC")
    "3x3_wide": (4, 64, 64, 16, 16, (3, 3), "pads = [1, 1, 1, 1]"),
}


def conv_models(dtype: str, case: str):
    """X with NaN/Inf, and the dense Conv, the constant-weight and the fed-weight Conv2dCompress
    models of one CONV_CASES case: (x, values, index, dense, const, fed, rtol). Also used by the
    CUDA tests."""
    np_dtype, rtol = DTYPES[dtype]
    batch, c, oc, h, wd, kernel, attrs = CONV_CASES[case]
    group = 2 if "group = 2" in attrs else 1
    rng = np.random.default_rng(sum(map(ord, case)))
    weight = fmt.prune_weight_magnitude(rng.standard_normal((oc, c // group, *kernel)).astype(np.float32), "oihw")
    weight[0, :4] = 0.0  # a feature whose first taps keep nothing: every non-finite input there is pruned
    x = sprinkle(rng, rng.standard_normal((batch, c, h, wd)).astype(np.float32), 2)
    bias = rng.standard_normal(oc).astype(np.float32)
    if dtype == "bfloat16":
        x, weight, bias = round_bf16(x), round_bf16(weight), round_bf16(bias)
    x, weight, bias = x.astype(np_dtype), weight.astype(np_dtype), bias.astype(np_dtype)
    values, index = fmt.compress_weight(weight, "oihw")
    conv_attrs = f"kernel_shape = [{kernel[0]}, {kernel[1]}]" + (f", {attrs}" if attrs else "")
    dense = build(f"Y = Conv <{conv_attrs}> (X, W, B)", {"X": x.astype(np.float32)},
                  {"W": weight.astype(np.float32), "B": bias.astype(np.float32)})
    op_line, sfx = dtype_body(dtype, f"Y = onnxsparse.Conv2dCompress <{conv_attrs}> (X, values, index, B)",
                              ["X", "values", "B"])
    op_line = op_line.replace("(X, values, index, B)", f"(X{sfx}, values{sfx}, index, B{sfx})")
    out_type = "float16" if dtype == "float16" else "float"
    const = build(op_line, {"X": x}, {"values": values, "index": index, "B": bias}, out_type)
    fed = build(op_line, {"X": x, "values": values, "index": index}, {"B": bias}, out_type)
    return x, values, index, dense, const, fed, rtol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_nonfinite_like_dense(isa, dtype, case):
    x, values, index, dense, const, fed, rtol = conv_models(dtype, case)
    expected = run(dense, {"X": x.astype(np.float32)}, sparse=False).astype(np.float64)
    assert np.isnan(expected).any() and np.isinf(expected).any()
    for model, feeds in ((const, {"X": x}), (fed, {"X": x, "values": values, "index": index})):
        y = run(model, feeds, sparse=True)
        assert_same_nonfinite(y, expected, rtol)


def nhwc_relu(model: onnx.ModelProto) -> onnx.ModelProto:
    """A conv_models model with its Conv2dCompress in layout "NHWC" (what compile --conv-layout nhwc
    writes) between Transposes, and a fused ReLU: on CUDA the ReLU then runs in the product's epilogue,
    before the NaN/Inf fix-up. Also used by the CUDA tests."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    at = next(i for i, n in enumerate(graph.node) if n.op_type == "Conv2dCompress")
    conv = graph.node[at]
    conv.attribute.extend([onnx.helper.make_attribute("layout", "NHWC"),
                           onnx.helper.make_attribute("activation", "Relu")])
    x, y = conv.input[0], conv.output[0]
    conv.input[0], conv.output[0] = x + "_nhwc", y + "_nhwc"
    graph.node.insert(at + 1, onnx.helper.make_node("Transpose", [y + "_nhwc"], [y], perm=[0, 3, 1, 2]))
    graph.node.insert(at, onnx.helper.make_node("Transpose", [x], [x + "_nhwc"], perm=[0, 2, 3, 1]))
    return model


def relu_keeping_nan(y: np.ndarray) -> np.ndarray:
    """The op's fused ReLU (docs/ops.md: x < 0 ? 0 : x), which keeps a NaN."""
    return np.where(y < 0, 0.0, y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [c for c in CONV_CASES if "group" not in CONV_CASES[c][6]])
def test_conv_nhwc_layout_relu_nonfinite_like_dense(isa, dtype, case):
    x, _, _, dense, const, _, rtol = conv_models(dtype, case)
    expected = relu_keeping_nan(run(dense, {"X": x.astype(np.float32)}, sparse=False).astype(np.float64))
    assert np.isnan(expected).any() and np.isinf(expected).any()
    assert_same_nonfinite(run(nhwc_relu(const), {"X": x}, sparse=True), expected, rtol)


def infinities_at_kept_positions(activation: str | None):
    """(model, X, expected): a 1x1 Conv2dCompress in layout "NHWC" (fp16, K = 32, 16 outputs, 64
    pixels, a bias, `activation` fused or None) whose input pixels (0, 0, 0) and (1, 2, 3) hold
    [+Inf, -Inf] in channels 0-1, met by weight rows 0-4 with kept values: [1, 1] (Inf - Inf: NaN),
    [0, 0, 2, 0] (Inf times a zero: NaN), [1, -1] (+Inf), [-1, 1] (-Inf, 0 after a ReLU) and
    [3, 0, 0, 0] (SPEC keeps elements 0 and 1, the second as a zero: -Inf times 0, NaN). `expected`:
    the dense product in float64 (numpy), the ReLU keeping NaN. Also used by the CUDA tests and
    benchmarks/cuda/probe_nonfinite_conv.py."""
    import onnx.helper as oh

    n, h, w, c, oc = 4, 4, 4, 32, 16  # K = 32: a shape cuSPARSELt takes
    rng = np.random.default_rng(5)
    weight = fmt.prune_weight_magnitude(rng.standard_normal((oc, c, 1, 1)).astype(np.float32), "oihw")
    weight[:5, :, 0, 0] = 0.0
    weight[0, :2, 0, 0] = [1.0, 1.0]
    weight[1, 2, 0, 0] = 2.0
    weight[2, :2, 0, 0] = [1.0, -1.0]
    weight[3, :2, 0, 0] = [-1.0, 1.0]
    weight[4, 0, 0, 0] = 3.0
    weight = weight.astype(np.float16)
    values, index = fmt.compress_weight(weight, "oihw")
    x = rng.standard_normal((n, h, w, c)).astype(np.float16)
    x[0, 0, 0, :2] = [np.inf, -np.inf]
    x[1, 2, 3, :2] = [np.inf, -np.inf]
    bias = rng.standard_normal(oc).astype(np.float16)
    attributes = {"activation": activation} if activation else {}
    node = oh.make_node("Conv2dCompress", ["X", "values", "index", "B"], ["Y"], domain="onnxsparse",
                        kernel_shape=[1, 1], layout="NHWC", **attributes)
    graph = oh.make_graph([node], "g", [oh.make_tensor_value_info("X", onnx.TensorProto.FLOAT16, [n, h, w, c])],
                          [oh.make_tensor_value_info("Y", onnx.TensorProto.FLOAT16, [n, h, w, oc])],
                          initializer=[onnx.numpy_helper.from_array(values, "values"),
                                       onnx.numpy_helper.from_array(index, "index"),
                                       onnx.numpy_helper.from_array(bias, "B")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("onnxsparse", 1)])
    model.ir_version = 10
    with np.errstate(invalid="ignore"):
        expected = np.einsum("nhwc,oc->nhwo", x.astype(np.float64),
                             weight[:, :, 0, 0].astype(np.float64)) + bias.astype(np.float64)
    if activation:
        expected = relu_keeping_nan(expected)
    assert np.isnan(expected[0, 0, 0, [0, 1, 4]]).all() and np.isposinf(expected[0, 0, 0, 2])
    assert expected[0, 0, 0, 3] == (0 if activation else -np.inf)
    return model, x, expected


@pytest.mark.parametrize("activation", ["Relu", None])
def test_nhwc_layout_infinities_at_kept_positions_like_dense(isa, activation):
    """The CPU twin of the CUDA test of the same name: infinities at positions the weight keeps."""
    model, x, expected = infinities_at_kept_positions(activation)
    assert_same_nonfinite(run(model, {"X": x}, sparse=True), expected, DTYPES["float16"][1])


def test_fixup_touches_only_rows_with_nonfinite_inputs(isa):
    """Rows of A without a NaN/Inf give bit-for-bit the product they give in a batch without any."""
    rng = np.random.default_rng(3)
    w = fmt.prune_weight_magnitude(rng.standard_normal((32, 24)).astype(np.float32), "kn")
    values, index = fmt.compress_weight(w, "kn")
    model = build("Y = onnxsparse.MatMulCompress(A, values, index)", {"A": np.zeros((6, 32), np.float32)},
                  {"values": values, "index": index})
    a = rng.standard_normal((6, 32)).astype(np.float32)
    clean = run(model, {"A": a}, sparse=True)
    a[2, 5] = np.nan
    a[4, 31] = -np.inf
    y = run(model, {"A": a}, sparse=True)
    rows = [0, 1, 3, 5]
    np.testing.assert_array_equal(y[rows], clean[rows])
    assert np.isnan(y[2]).all() and not np.isfinite(y[4]).any()
