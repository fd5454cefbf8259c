"""CPU kernels of the custom-op library: MatMulCompress, Conv2dCompress and CompressOp.

Each op runs in ONNX Runtime (CPUExecutionProvider) from a tiny model written in ONNX text, with
SPEC's compressed weight (``onnxsparse.format.compress_weight``) as initializers, and is compared
with numpy or with ONNX Runtime's own dense MatMul/Gemm/Conv on the decompressed weight.

Every test runs once per CPU kernel path (``ONNXSPARSE_CPU_ISA=avx512|avx2|portable``, read when a
kernel is created), skipped with the reason where the processor lacks the instruction set. Models
with constant ``values``/``index`` run the fast kernels over the weight re-laid out at creation;
models that feed them at run time run the generic kernel over SPEC's form.

Tolerances: fp32 within rtol 1e-5 and an atol that grows with K; fp16 within one fp16 ulp of an
fp64 reference on the same fp16 inputs (the kernel accumulates in fp32 and rounds once), plus the
fp32 accumulation term.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnxruntime as ort
import pytest
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

import onnxsparse
from onnxsparse import format as fmt

from conftest import ISA_FLAGS, force_cpu_isa
from reference_ops import run_reference

pytestmark = pytest.mark.kernels  # every test runs the library's CPU kernels

CPU = ["CPUExecutionProvider"]
DTYPES = {"float": np.float32, "float16": np.float16}
ORT_ERRORS = (ort_state.Fail, ort_state.InvalidArgument, ort_state.RuntimeException)
ONNX_DTYPE = {np.dtype(np.float32): "float", np.dtype(np.float16): "float16", np.dtype(np.uint8): "uint8"}


# --------------------------------------------------------------------------------------------
# CPU kernel paths



@pytest.fixture(autouse=True, params=list(ISA_FLAGS))
def cpu_isa(request, monkeypatch):
    """Runs the test with the kernels forced onto one instruction-set path."""
    return force_cpu_isa(request.param, monkeypatch)


# --------------------------------------------------------------------------------------------
# helpers


def make_model(body: str, inputs: dict[str, np.ndarray], outputs: dict[str, str],
               initializers: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A model from ONNX text: graph inputs typed after the arrays, outputs of unknown shape."""
    decl_in = ", ".join(f"{ONNX_DTYPE[a.dtype]}[{', '.join(map(str, a.shape))}] {name}" for name, a in inputs.items())
    decl_out = ", ".join(f"{dtype} {name}" for name, dtype in outputs.items())
    model = onnx.parser.parse_model(
        f'<ir_version: 10, opset_import: ["" : 17, "onnxsparse" : 1]>\n'
        f"g ({decl_in}) => ({decl_out}) {{\n{body}\n}}"
    )
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    for name, array in (initializers or {}).items():
        model.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    return model


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int = 1) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxsparse.InferenceSession(model, sess_options=options, providers=CPU)
    return session.run(None, feeds)


def run_dense(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """ONNX Runtime without the library: the reference for dense MatMul/Gemm/Conv."""
    return ort.InferenceSession(model.SerializeToString(), providers=CPU).run(None, feeds)


def sparse_weight(rng, shape, layout, dtype):
    """A random weight of the given layout, magnitude-pruned to 2:4 along SPEC's axis."""
    dense = rng.standard_normal(shape).astype(np.float32)
    return fmt.prune_weight_magnitude(dense, layout).astype(dtype)


def assert_close(actual: np.ndarray, expected: np.ndarray, k: int, dtype) -> None:
    """actual (dtype) against an fp64 reference computed from the same dtype inputs."""
    assert actual.dtype == np.dtype(dtype)
    assert actual.shape == expected.shape
    actual64 = actual.astype(np.float64)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    accumulate = 1e-6 * max(k, 1) * scale  # fp32 accumulation over K terms
    if np.dtype(dtype) == np.float16:
        ulp = np.spacing(np.abs(expected).astype(np.float16)).astype(np.float64)
        bound = ulp + accumulate
    else:
        bound = 1e-5 * np.abs(expected) + accumulate
    excess = np.abs(actual64 - expected) - bound
    assert (excess <= 0).all(), f"max error {np.abs(actual64 - expected).max()} exceeds the bound"


def raises_op_error(op: str, model: onnx.ModelProto, feeds: dict[str, np.ndarray], match: str | None = None):
    """The model loads (or not), and running it is an ONNX Runtime error naming the op, not a crash."""
    with pytest.raises(ORT_ERRORS) as info:
        run(model, feeds)
    message = str(info.value)
    assert f"{op}: " in message, message
    if match is not None:
        assert re.search(match, message), message
    return message


# --------------------------------------------------------------------------------------------
# MatMulCompress


def matmul_reference(a, w_kn, alpha=1.0, bias=None, trans_a=False):
    a64 = a.astype(np.float64)
    if trans_a:
        a64 = a64.T
    y = alpha * (a64 @ w_kn.astype(np.float64))
    if bias is not None:
        y = y + bias.astype(np.float64)
    return y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [4, 12, 20])
@pytest.mark.parametrize("n", [1, 7, 17])
@pytest.mark.parametrize("m", [1, 3])
def test_matmul_sizes(dtype, k, n, m):
    rng = np.random.default_rng(k * 100 + n * 10 + m)
    np_dtype = DTYPES[dtype]
    w = sparse_weight(rng, (k, n), "kn", np_dtype)
    values, index = fmt.compress_weight(w, "kn")
    a = rng.standard_normal((m, k)).astype(np_dtype)
    model = make_model("Y = onnxsparse.MatMulCompress(A, values, index)", {"A": a}, {"Y": dtype},
                       {"values": values, "index": index})
    (y,) = run(model, {"A": a})
    assert_close(y, matmul_reference(a, w), k, np_dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("a_shape", [(20,), (3, 20), (2, 3, 20), (2, 1, 3, 20), (5, 37, 20)])
def test_matmul_ranks(dtype, a_shape):
    rng = np.random.default_rng(len(a_shape))
    np_dtype = DTYPES[dtype]
    k, n = a_shape[-1], 7
    w = sparse_weight(rng, (k, n), "kn", np_dtype)
    values, index = fmt.compress_weight(w, "kn")
    a = rng.standard_normal(a_shape).astype(np_dtype)
    model = make_model("Y = onnxsparse.MatMulCompress(A, values, index)", {"A": a}, {"Y": dtype},
                       {"values": values, "index": index})
    (y,) = run(model, {"A": a})
    assert y.shape == a_shape[:-1] + (n,)
    assert_close(y, matmul_reference(a, w), k, np_dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matmul_alpha_trans_bias(dtype, trans_a, with_bias):
    rng = np.random.default_rng(7 + trans_a + 2 * with_bias)
    np_dtype = DTYPES[dtype]
    m, k, n = 19, 12, 17
    w = sparse_weight(rng, (k, n), "kn", np_dtype)
    values, index = fmt.compress_weight(w, "kn")
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np_dtype)
    bias = rng.standard_normal(n).astype(np_dtype)
    inits = {"values": values, "index": index}
    args = "A, values, index"
    if with_bias:
        inits["bias"] = bias
        args += ", bias"
    model = make_model(f"Y = onnxsparse.MatMulCompress <alpha = 0.75, transA = {trans_a}> ({args})",
                       {"A": a}, {"Y": dtype}, inits)
    (y,) = run(model, {"A": a})
    expected = matmul_reference(a, w, 0.75, bias if with_bias else None, bool(trans_a))
    assert_close(y, expected, k, np_dtype)


@pytest.mark.parametrize("trans_a", [0, 1])
def test_matmul_matches_dense_gemm(trans_a):
    """Gemm(A, B, C, alpha, transA, transB=1) and its rewrite agree (fp32, ORT's own Gemm)."""
    rng = np.random.default_rng(11)
    m, k, n = 33, 40, 24
    b = sparse_weight(rng, (n, k), "nk", np.float32)
    c = rng.standard_normal(n).astype(np.float32)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    dense = make_model(f"Y = Gemm <alpha = 1.5, transA = {trans_a}, transB = 1> (A, B, C)", {"A": a},
                       {"Y": "float"}, {"B": b, "C": c})
    values, index = fmt.compress_weight(b, "nk")
    sparse = make_model(f"Y = onnxsparse.MatMulCompress <alpha = 1.5, transA = {trans_a}> (A, values, index, C)",
                        {"A": a}, {"Y": "float"}, {"values": values, "index": index, "C": c})
    (expected,) = run_dense(dense, {"A": a})
    (y,) = run(sparse, {"A": a})
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * k)


def test_matmul_empty_optional_bias():
    """A node that spells its optional bias "" runs without it (and does not crash)."""
    rng = np.random.default_rng(3)
    w = sparse_weight(rng, (8, 5), "kn", np.float32)
    values, index = fmt.compress_weight(w, "kn")
    a = rng.standard_normal((2, 8)).astype(np.float32)
    model = make_model('Y = onnxsparse.MatMulCompress(A, values, index, "")', {"A": a}, {"Y": "float"},
                       {"values": values, "index": index})
    (y,) = run(model, {"A": a})
    assert_close(y, matmul_reference(a, w), 8, np.float32)


def test_matmul_bfloat16_through_casts():
    """bfloat16 variant, fed and read back through Cast (numpy has no bfloat16)."""
    rng = np.random.default_rng(5)
    k, n, m = 16, 9, 4
    w = sparse_weight(rng, (k, n), "kn", np.float32)
    values, index = fmt.compress_weight(w, "kn")
    a = rng.standard_normal((m, k)).astype(np.float32)
    body = """
        a16 = Cast <to = 16> (A)
        v16 = Cast <to = 16> (values)
        y16 = onnxsparse.MatMulCompress(a16, v16, index)
        Y = Cast <to = 1> (y16)
    """
    model = make_model(body, {"A": a}, {"Y": "float"}, {"values": values, "index": index})
    (y,) = run(model, {"A": a})
    expected = matmul_reference(a, w)
    np.testing.assert_allclose(y, expected, rtol=2e-2, atol=2e-2 * np.abs(expected).max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [
    (1, 1028, 33),     # one row tile: a single run over K; 3 blocks of 16 (an odd block, zero-paired)
    (9, 1060, 40),     # several row tiles: K in blocks of 256 groups (257..265 groups: a short last block)
    (20, 132, 16),     # K = 33 groups; row tiles of 8 + 4
    (47, 36, 70),      # the last size of the Rows kernel
    (48, 132, 17),     # the first of the Cols kernel (A transposed into strips of 64 rows)
    (130, 264, 45),    # three strips, the last one partial; K in blocks of 32 groups
    (300, 1028, 100),  # two tiles of rows
    # Around the narrow Cols kernel (AVX-512: strips of 16 for 14-16 rows, of 32 for 28-32 and >= 48
    # rows; Rows elsewhere below 48), odd sizes: feature tiles of 16 / 8 / 4 / 2 / 1 (N = 17, 23).
    (7, 20, 17), (8, 20, 17), (13, 20, 17), (14, 20, 23), (15, 20, 17), (16, 20, 17), (17, 20, 17),
    (27, 20, 23), (28, 20, 17), (31, 20, 17), (32, 20, 23), (33, 20, 17), (47, 20, 17), (48, 20, 17),
    (49, 20, 23), (64, 20, 17), (65, 20, 17),
    (16, 1060, 40),    # narrow strip of 16: K in blocks of 256 groups (265: two blocks)
    (30, 540, 33),     # narrow strip of 32: K in blocks of 128 groups (135: two blocks)
    (100, 540, 70),    # four strips of 32, the last one partial
])
def test_matmul_fast_paths(dtype, m, k, n):
    """Shapes that cross every blocking boundary of the fast kernels, against fp64 numpy."""
    rng = np.random.default_rng(m * 7 + k + n)
    np_dtype = DTYPES[dtype]
    w = sparse_weight(rng, (k, n), "kn", np_dtype)
    values, index = fmt.compress_weight(w, "kn")
    a = rng.standard_normal((m, k)).astype(np_dtype)
    bias = rng.standard_normal(n).astype(np_dtype)
    model = make_model("Y = onnxsparse.MatMulCompress <alpha = 0.5> (A, values, index, bias)", {"A": a},
                       {"Y": dtype}, {"values": values, "index": index, "bias": bias})
    (y,) = run(model, {"A": a})
    assert_close(y, matmul_reference(a, w, 0.5, bias), k, np_dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [
    (2, 36, 300),      # AVX2 Rows: one tile of 2 rows over pairs of blocks; chunks of 64 features (19 blocks)
    (3, 20, 33),       # tiles of 2 + 1 rows; the third block without its pair
    (5, 1028, 49),     # 2 + 2 + 1 rows, one run over K (257 groups), 4 blocks (one partial)
    (7, 12, 16),       # a single block (no pair), K = 12 (not a multiple of 8)
    (9, 1060, 17),     # several row tiles, K in blocks of 256 groups, odd rows, a block and a 1-feature one
    (16, 132, 64),     # M = 16 (AVX2: Rows, not a narrow strip)
    (33, 68, 96),      # odd M, 3 chunks of 32 features
    (129, 36, 20),     # two chunks of 128 rows, the second with one row
])
def test_matmul_rows_tiles(dtype, m, k, n):
    """The Rows kernel's tiles (AVX2: 2 rows x a pair of blocks at every M) at ragged M, N and K."""
    rng = np.random.default_rng(m * 13 + k + n)
    np_dtype = DTYPES[dtype]
    w = sparse_weight(rng, (k, n), "kn", np_dtype)
    values, index = fmt.compress_weight(w, "kn")
    a = rng.standard_normal((m, k)).astype(np_dtype)
    bias = rng.standard_normal(n).astype(np_dtype)
    model = make_model("Y = onnxsparse.MatMulCompress <alpha = 2.0> (A, values, index, bias)", {"A": a},
                       {"Y": dtype}, {"values": values, "index": index, "bias": bias})
    (y,) = run(model, {"A": a})
    assert_close(y, matmul_reference(a, w, 2.0, bias), k, np_dtype)


@pytest.mark.parametrize("m", [5, 64])
def test_matmul_fast_trans_a(m):
    rng = np.random.default_rng(m)
    k, n = 72, 50
    w = sparse_weight(rng, (k, n), "kn", np.float32)
    values, index = fmt.compress_weight(w, "kn")
    a = rng.standard_normal((k, m)).astype(np.float32)
    model = make_model("Y = onnxsparse.MatMulCompress <transA = 1> (A, values, index)", {"A": a}, {"Y": "float"},
                       {"values": values, "index": index})
    (y,) = run(model, {"A": a})
    assert_close(y, matmul_reference(a, w, trans_a=True), k, np.float32)


def test_matmul_fast_and_generic_agree():
    """The same product from constant weights (fast kernels) and from fed weights (generic kernel)."""
    rng = np.random.default_rng(12)
    m, k, n = 70, 96, 37
    w = sparse_weight(rng, (k, n), "kn", np.float32)
    values, index = fmt.compress_weight(w, "kn")
    a = rng.standard_normal((m, k)).astype(np.float32)
    const = make_model("Y = onnxsparse.MatMulCompress(A, values, index)", {"A": a}, {"Y": "float"},
                       {"values": values, "index": index})
    fed = make_model("Y = onnxsparse.MatMulCompress(A, values, index)",
                     {"A": a, "values": values, "index": index}, {"Y": "float"})
    (fast,) = run(const, {"A": a})
    (generic,) = run(fed, {"A": a, "values": values, "index": index})
    np.testing.assert_allclose(fast, generic, rtol=1e-5, atol=1e-5 * k)


def test_matmul_constant_invalid_index():
    """A constant index with an invalid nibble is still reported (the generic kernel runs it)."""
    values = np.ones((3, 8), np.float32)
    index = np.zeros((3, 2), np.uint8)
    index[2, 1] = 0x30
    a = np.ones((2, 16), np.float32)
    model = make_model("Y = onnxsparse.MatMulCompress(A, values, index)", {"A": a}, {"Y": "float"},
                       {"values": values, "index": index})
    raises_op_error("MatMulCompress", model, {"A": a}, "invalid 2-bit value 3")


# --------------------------------------------------------------------------------------------
# Conv2dCompress

CONV_CASES = {
    # name: (C, OC, H, W, kernel, attributes)
    "3x3": (8, 6, 7, 7, (3, 3), ""),
    "1x1": (4, 5, 6, 5, (1, 1), ""),
    "1x3": (4, 3, 5, 6, (1, 3), ""),
    "strided": (8, 6, 9, 8, (3, 3), "strides = [2, 2]"),
    "padded": (8, 6, 7, 6, (3, 3), "pads = [1, 0, 2, 1]"),
    "dilated": (4, 6, 9, 9, (3, 3), "dilations = [2, 1], pads = [2, 1, 2, 1]"),
    "grouped": (8, 6, 7, 7, (3, 3), "group = 2, pads = [1, 1, 1, 1]"),
    "grouped4": (16, 8, 6, 6, (3, 3), "group = 4, strides = [1, 2]"),
    "notset": (4, 4, 6, 6, (3, 3), 'auto_pad = "NOTSET", pads = [1, 1, 1, 1]'),
    "same_upper": (4, 4, 8, 7, (2, 3), 'auto_pad = "SAME_UPPER", strides = [2, 2]'),
    "same_lower": (4, 4, 8, 7, (2, 3), 'auto_pad = "SAME_LOWER", strides = [2, 2]'),
    "valid": (8, 4, 9, 8, (3, 3), 'auto_pad = "VALID", strides = [2, 1]'),
}


def conv_models(c, oc, h, w, kernel, attrs, dtype, batch, with_bias, rng):
    np_dtype = DTYPES[dtype]
    group = int(re.search(r"group = (\d+)", attrs).group(1)) if "group" in attrs else 1
    weight = sparse_weight(rng, (oc, c // group, *kernel), "oihw", np_dtype)
    bias = rng.standard_normal(oc).astype(np_dtype)
    x = rng.standard_normal((batch, c, h, w)).astype(np_dtype)
    values, index = fmt.compress_weight(weight, "oihw")
    conv_attrs = f"kernel_shape = [{kernel[0]}, {kernel[1]}]" + (f", {attrs}" if attrs else "")
    b_arg = ", B" if with_bias else ""
    inits = {"values": values, "index": index}
    if with_bias:
        inits["B"] = bias
    sparse = make_model(f"Y = onnxsparse.Conv2dCompress <{conv_attrs}> (X, values, index{b_arg})", {"X": x},
                        {"Y": dtype}, inits)
    # The reference: ORT's own fp32 Conv on the same (dtype-rounded) inputs and the dense weight.
    x32 = x.astype(np.float32)
    ref_inits = {"W": weight.astype(np.float32)}
    if with_bias:
        ref_inits["B"] = bias.astype(np.float32)
    dense = make_model(f"Y = Conv <{conv_attrs}> (X, W{b_arg})", {"X": x32}, {"Y": "float"}, ref_inits)
    return sparse, dense, x, x32, values.shape[1] * 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv(case, with_bias, dtype):
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    sparse, dense, x, x32, k = conv_models(*CONV_CASES[case], dtype, 2, with_bias, rng)
    (expected,) = run_dense(dense, {"X": x32})
    (y,) = run(sparse, {"X": x})
    assert_close(y, expected.astype(np.float64), k, DTYPES[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [c for c in CONV_CASES if not c.startswith("grouped")])
def test_conv_nhwc_layout(case, dtype):
    """layout="NHWC": input [N, H, W, C], output [N, OH, OW, OC], the same values as the NCHW op (the
    CPU kernel transposes around it); with bias and a fused Relu."""
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    c, oc, h, w, kernel, attrs = CONV_CASES[case]
    sparse, _, x, _, _ = conv_models(c, oc, h, w, kernel, attrs, dtype, 2, True, rng)
    conv_attrs = f"kernel_shape = [{kernel[0]}, {kernel[1]}]" + (f", {attrs}" if attrs else "")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in sparse.graph.initializer}
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    for act in ("", ', activation = "Relu"'):
        nchw = make_model(f"Y = onnxsparse.Conv2dCompress <{conv_attrs}{act}> (X, values, index, B)", {"X": x},
                          {"Y": dtype}, inits)
        nhwc = make_model(f'Y = onnxsparse.Conv2dCompress <{conv_attrs}{act}, layout = "NHWC"> (X, values, index, B)',
                          {"X": x_nhwc}, {"Y": dtype}, inits)
        (want,) = run(nchw, {"X": x})
        (got,) = run(nhwc, {"X": x_nhwc})
        assert got.shape == (want.shape[0], want.shape[2], want.shape[3], want.shape[1])
        np.testing.assert_array_equal(got, want.transpose(0, 2, 3, 1))
        if not act:  # and the Python reference's NHWC reading of the attribute
            (ref,) = run_reference(nhwc, {"X": x_nhwc})
            np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32), rtol=2e-2, atol=2e-2)


def test_conv_bad_layout():
    rng = np.random.default_rng(3)
    sparse, _, x, _, _ = conv_models(*CONV_CASES["3x3"], "float", 1, False, rng)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in sparse.graph.initializer}
    model = make_model('Y = onnxsparse.Conv2dCompress <kernel_shape = [3, 3], layout = "NCWH"> (X, values, index)',
                       {"X": x}, {"Y": "float"}, inits)
    raises_op_error("Conv2dCompress", model, {"X": x}, "attribute 'layout' must be")


@pytest.mark.parametrize("auto_pad,pads", [("SAME_UPPER", "1, 1, 2, 2"), ("SAME_LOWER", "2, 2, 1, 1")])
def test_conv_same_with_dilation(auto_pad, pads):
    """ONNX's SAME padding with dilation (ORT's Conv refuses it): equal to the explicit pads it implies.

    H = W = 8, kernel 3, dilation 2 (extent 5), stride 2: output 4, total pad 3*2 + 5 - 8 = 3.
    """
    rng = np.random.default_rng(8)
    weight = sparse_weight(rng, (4, 4, 3, 3), "oihw", np.float32)
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    values, index = fmt.compress_weight(weight, "oihw")
    common = "kernel_shape = [3, 3], strides = [2, 2], dilations = [2, 2]"
    sparse = make_model(f'Y = onnxsparse.Conv2dCompress <{common}, auto_pad = "{auto_pad}"> (X, values, index)',
                        {"X": x}, {"Y": "float"}, {"values": values, "index": index})
    dense = make_model(f"Y = Conv <{common}, pads = [{pads}]> (X, W)", {"X": x}, {"Y": "float"}, {"W": weight})
    (y,) = run(sparse, {"X": x})
    (expected,) = run_dense(dense, {"X": x})
    assert y.shape == (1, 4, 4, 4)
    assert_close(y, expected.astype(np.float64), 36, np.float32)


def test_conv_against_numpy():
    """One conv against a direct numpy loop, independent of ONNX Runtime's Conv."""
    rng = np.random.default_rng(2)
    c, oc, h, w, kh, kw, stride, pad = 8, 3, 6, 5, 3, 2, 2, 1
    weight = sparse_weight(rng, (oc, c, kh, kw), "oihw", np.float32)
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    values, index = fmt.compress_weight(weight, "oihw")
    model = make_model(
        f"Y = onnxsparse.Conv2dCompress <kernel_shape = [{kh}, {kw}], strides = [{stride}, {stride}], "
        f"pads = [{pad}, {pad}, {pad}, {pad}]> (X, values, index)",
        {"X": x}, {"Y": "float"}, {"values": values, "index": index})
    (y,) = run(model, {"X": x})
    xp = np.pad(x[0].astype(np.float64), ((0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    expected = np.zeros((1, oc, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw]
            expected[0, :, i, j] = np.tensordot(weight.astype(np.float64), patch, axes=([1, 2, 3], [0, 1, 2]))
    assert_close(y, expected, values.shape[1] * 2, np.float32)


# Shapes for the fast convolution: several pixel tiles (256) and strips (64), K blocks (128),
# batches with few tiles (panels shared by feature chunks) and many, 1x1 copies and im2col.
FAST_CONV_CASES = {
    # name: (C, OC, H, W, kernel, attributes, batch)
    "1x1_big": (36, 40, 19, 17, (1, 1), "", 1),
    "1x1_strided": (36, 21, 19, 17, (1, 1), "strides = [2, 2]", 2),
    "1x1_padded": (8, 20, 9, 9, (1, 1), "pads = [1, 0, 0, 1]", 1),
    "3x3_tiles": (16, 24, 18, 17, (3, 3), "pads = [1, 1, 1, 1]", 3),
    "3x3_deep": (64, 10, 7, 7, (3, 3), "pads = [1, 1, 1, 1]", 1),
    "3x3_strided_dilated": (12, 18, 15, 16, (3, 3), "strides = [2, 1], dilations = [1, 2], pads = [2, 1, 0, 2]", 2),
    "grouped_odd": (24, 9, 11, 10, (3, 3), "group = 3, pads = [1, 1, 1, 1]", 2),
    "5x5_valid": (8, 7, 12, 12, (5, 5), 'auto_pad = "VALID"', 1),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", FAST_CONV_CASES)
def test_conv_fast_paths(case, dtype):
    *shape, batch = FAST_CONV_CASES[case]
    rng = np.random.default_rng(sum(map(ord, case)))
    sparse, dense, x, x32, k = conv_models(*shape, dtype, batch, True, rng)
    (expected,) = run_dense(dense, {"X": x32})
    (y,) = run(sparse, {"X": x})
    assert_close(y, expected.astype(np.float64), k, DTYPES[dtype])


def test_conv_fast_and_generic_agree():
    rng = np.random.default_rng(21)
    c, oc = 16, 12
    weight = sparse_weight(rng, (oc, c, 3, 3), "oihw", np.float32)
    values, index = fmt.compress_weight(weight, "oihw")
    x = rng.standard_normal((2, c, 9, 11)).astype(np.float32)
    body = "Y = onnxsparse.Conv2dCompress <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (X, values, index)"
    const = make_model(body, {"X": x}, {"Y": "float"}, {"values": values, "index": index})
    fed = make_model(body, {"X": x, "values": values, "index": index}, {"Y": "float"})
    (fast,) = run(const, {"X": x})
    (generic,) = run(fed, {"X": x, "values": values, "index": index})
    np.testing.assert_allclose(fast, generic, rtol=1e-5, atol=1e-5 * 144)


# --------------------------------------------------------------------------------------------
# threads


def test_threads_give_the_same_result():
    rng = np.random.default_rng(9)
    w = sparse_weight(rng, (64, 70), "kn", np.float32)
    values, index = fmt.compress_weight(w, "kn")
    a = rng.standard_normal((2, 37, 64)).astype(np.float32)
    mm = make_model("Y = onnxsparse.MatMulCompress(A, values, index)", {"A": a}, {"Y": "float"},
                    {"values": values, "index": index})
    one, two = run(mm, {"A": a}, threads=1)[0], run(mm, {"A": a}, threads=2)[0]
    np.testing.assert_array_equal(one, two)
    assert_close(two, matmul_reference(a, w), 64, np.float32)

    sparse, dense, x, x32, k = conv_models(16, 32, 20, 20, (3, 3), "pads = [1, 1, 1, 1]", "float", 2, True, rng)
    one, two = run(sparse, {"X": x}, threads=1)[0], run(sparse, {"X": x}, threads=2)[0]
    np.testing.assert_array_equal(one, two)
    assert_close(two, run_dense(dense, {"X": x32})[0].astype(np.float64), k, np.float32)


# --------------------------------------------------------------------------------------------
# CompressOp

# SPEC's worked cases: elements e0 e1 e2 e3 (X, Y non-zero) -> index0, index1.
WORKED_CASES = [
    ("00XY", 2, 2), ("0X0Y", 1, 2), ("000X", 0, 2), ("00X0", 2, 0), ("0000", 0, 0),
    ("XY00", 0, 0), ("X00Y", 0, 2), ("0XY0", 1, 1),
]


def worked_rows(dtype) -> np.ndarray:
    """A [rows, K] matrix whose groups are SPEC's worked cases, zeros spelled both +0.0 and -0.0."""
    groups = []
    for sign in (1.0, -1.0):
        for pattern, _, _ in WORKED_CASES:
            nonzero = iter([1.5, -2.25])
            groups.append([next(nonzero) if ch != "0" else sign * 0.0 for ch in pattern])
    return np.array(groups, dtype=dtype).reshape(2, -1)  # 2 rows of 8 groups


def compress_model(weight: np.ndarray, layout: str) -> onnx.ModelProto:
    dtype = ONNX_DTYPE[weight.dtype]
    return make_model(f'values, index = onnxsparse.CompressOp <layout = "{layout}"> (W)', {"W": weight},
                      {"values": dtype, "index": "uint8"})


@pytest.mark.parametrize("dtype", DTYPES)
def test_compress_worked_cases(dtype):
    matrix = worked_rows(DTYPES[dtype])
    values, index = run(compress_model(matrix, "nk"), {"W": matrix})
    ref_values, ref_index = fmt.compress(matrix)
    assert values.tobytes() == ref_values.tobytes()
    np.testing.assert_array_equal(index, ref_index)
    # And the nibbles are SPEC's table, whatever the reference does.
    nibbles = np.stack([index & 0xF, index >> 4], axis=-1).reshape(2, -1)
    expected = [i0 | (i1 << 2) for _, i0, i1 in WORKED_CASES]
    np.testing.assert_array_equal(nibbles, [expected, expected])
    # Empty slots hold +0.0 (bit pattern 0), never -0.0.
    assert not np.signbit(values[values == 0]).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout,shape", [("kn", (12, 5)), ("kn", (8, 3)), ("nk", (6, 20)),
                                          ("oihw", (5, 4, 3, 3)), ("oihw", (3, 8, 1, 2))])
def test_compress_layouts_bit_equal(dtype, layout, shape):
    rng = np.random.default_rng(len(shape) * 17 + shape[0])
    weight = sparse_weight(rng, shape, layout, DTYPES[dtype])
    # Sprinkle -0.0 where the weight is zero, and zero out whole groups here and there.
    weight = np.where((weight == 0) & (rng.random(shape) < 0.5), -0.0, weight).astype(DTYPES[dtype])
    weight = np.where(rng.random(shape) < 0.2, 0.0, weight).astype(DTYPES[dtype])
    values, index = run(compress_model(weight, layout), {"W": weight})
    ref_values, ref_index = fmt.compress_weight(weight, layout)
    assert values.shape == ref_values.shape and values.dtype == ref_values.dtype
    assert values.tobytes() == ref_values.tobytes()
    np.testing.assert_array_equal(index, ref_index)


def test_compress_feeds_matmul_unfolded():
    """The unfolded form: CompressOp in front of MatMulCompress inside the session."""
    rng = np.random.default_rng(4)
    w = sparse_weight(rng, (20, 9), "kn", np.float32)
    a = rng.standard_normal((3, 20)).astype(np.float32)
    body = """
        values, index = onnxsparse.CompressOp <layout = "kn"> (W)
        Y = onnxsparse.MatMulCompress(A, values, index)
    """
    model = make_model(body, {"A": a}, {"Y": "float"}, {"W": w})
    (y,) = run(model, {"A": a})
    assert_close(y, matmul_reference(a, w), 20, np.float32)


def test_compress_rejects_dense_group():
    weight = np.zeros((8, 3), np.float32)
    weight[0:3, 1] = 1.0  # three non-zeros in one group of K
    raises_op_error("CompressOp", compress_model(weight, "kn"), {"W": weight}, "more than 2 non-zeros")


@pytest.mark.parametrize("layout,shape,match", [
    ("kn", (6, 4), "multiple of 4"),
    ("oihw", (2, 3, 1, 1), "multiple of 4"),
    ("nk", (2, 4, 1), "rank 2"),
    ("oihw", (4, 8), "rank 4"),
    ("nchw", (4, 8), "layout"),
])
def test_compress_bad_input(layout, shape, match):
    weight = np.zeros(shape, np.float32)
    raises_op_error("CompressOp", compress_model(weight, layout), {"W": weight}, match)


# --------------------------------------------------------------------------------------------
# bad inputs: an ONNX Runtime error naming the op, never a crash


def matmul_feeds(m=2, k=8, n=3, values_shape=None, index_shape=None, a_shape=None):
    return {
        "A": np.ones((m, k) if a_shape is None else a_shape, np.float32),
        "values": np.ones(values_shape or (n, k // 2), np.float32),
        "index": np.zeros(index_shape or (n, (k + 7) // 8), np.uint8),
    }


def matmul_runtime_model(feeds, attrs="", bias=None):
    args = "A, values, index" + (", bias" if bias is not None else "")
    inputs = dict(feeds)
    if bias is not None:
        inputs["bias"] = bias
    attr_text = f"<{attrs}>" if attrs else ""
    return make_model(f"Y = onnxsparse.MatMulCompress {attr_text} ({args})", inputs, {"Y": "float"}), inputs


@pytest.mark.parametrize("kwargs,match", [
    ({"index_shape": (4, 1)}, "index has shape"),
    ({"index_shape": (3, 2)}, "index has shape"),
    ({"values_shape": (3, 6), "index_shape": (3, 2)}, "K of A is 8"),
    ({"k": 6, "values_shape": (3, 3), "index_shape": (3, 1)}, "not a multiple of 4"),
    ({"values_shape": (3, 4, 1)}, "values must have rank 2"),
    ({"a_shape": (1, 2, 3, 4, 8)}, "rank 1 to 4"),
    ({"a_shape": ()}, "rank 1 to 4"),
])
def test_matmul_bad_shapes(kwargs, match):
    feeds = matmul_feeds(**kwargs)
    model, feeds = matmul_runtime_model(feeds)
    raises_op_error("MatMulCompress", model, feeds, match)


def test_matmul_bad_bias():
    model, feeds = matmul_runtime_model(matmul_feeds(), bias=np.ones(4, np.float32))
    raises_op_error("MatMulCompress", model, feeds, "bias must have shape")


def test_matmul_trans_a_needs_rank_2():
    model, feeds = matmul_runtime_model(matmul_feeds(a_shape=(2, 8, 2)), attrs="transA = 1")
    raises_op_error("MatMulCompress", model, feeds, "transA=1")


@pytest.mark.parametrize("nibble", [0x3, 0xC, 0xF, 0x3 << 4, 0xC << 4])
def test_matmul_invalid_index_nibble(nibble):
    """A field of 3 anywhere, including index1 of the last group (which points past K)."""
    feeds = matmul_feeds(k=16)
    feeds["index"][1, 1] = nibble
    model, feeds = matmul_runtime_model(feeds)
    raises_op_error("MatMulCompress", model, feeds, "invalid 2-bit value 3")


def test_matmul_missing_required_input():
    feeds = matmul_feeds()
    model = make_model('Y = onnxsparse.MatMulCompress(A, "", index)', {"A": feeds["A"], "index": feeds["index"]},
                       {"Y": "float"})
    raises_op_error("MatMulCompress", model, {"A": feeds["A"], "index": feeds["index"]}, "missing")


def conv_runtime_model(x_shape, values_shape, index_shape, attrs, bias_shape=None, index_fill=0):
    inputs = {
        "X": np.ones(x_shape, np.float32),
        "values": np.ones(values_shape, np.float32),
        "index": np.full(index_shape, index_fill, np.uint8),
    }
    args = "X, values, index"
    if bias_shape is not None:
        inputs["B"] = np.ones(bias_shape, np.float32)
        args += ", B"
    attr_text = f"<{attrs}>" if attrs else ""
    return make_model(f"Y = onnxsparse.Conv2dCompress {attr_text} ({args})", inputs, {"Y": "float"}), inputs


@pytest.mark.parametrize("x_shape,values_shape,index_shape,attrs,bias_shape,match", [
    ((1, 4, 5, 5), (2, 18), (2, 5), "", None, "kernel_shape' is required"),
    ((1, 6, 5, 5), (2, 18), (2, 5), "kernel_shape = [3, 3]", None, "C=6"),
    ((1, 8, 5, 5), (3, 18), (3, 5), "kernel_shape = [3, 3], group = 2", None, "not divisible by group"),
    ((1, 4, 5, 5), (2, 18), (2, 5), "kernel_shape = [3, 3]", (3,), "B must have shape"),
    ((1, 4, 2, 5), (2, 18), (2, 5), "kernel_shape = [3, 3]", None, "negative"),
    ((1, 4, 5, 5), (2, 18), (2, 5), 'kernel_shape = [3, 3], auto_pad = "SAME"', None, "auto_pad"),
    ((1, 4, 5, 5), (2, 10), (2, 3), "kernel_shape = [3, 3]", None, "multiple of KH\\*KW"),
    ((1, 4, 5, 5), (2, 18), (2, 4), "kernel_shape = [3, 3]", None, "index has shape"),
    ((1, 4, 5, 5), (2, 18), (2, 5), "kernel_shape = [3, 3], strides = [0, 1]", None, "strides"),
    ((1, 4, 5, 5), (2, 18), (2, 5), "kernel_shape = [3]", None, "kernel_shape"),
    ((4, 5, 5), (2, 18), (2, 5), "kernel_shape = [3, 3]", None, "rank 4"),
])
def test_conv_bad_inputs(x_shape, values_shape, index_shape, attrs, bias_shape, match):
    model, feeds = conv_runtime_model(x_shape, values_shape, index_shape, attrs, bias_shape)
    raises_op_error("Conv2dCompress", model, feeds, match)


def test_conv_invalid_index_nibble():
    model, feeds = conv_runtime_model((1, 4, 5, 5), (2, 18), (2, 5), "kernel_shape = [3, 3]", index_fill=0x33)
    raises_op_error("Conv2dCompress", model, feeds, "invalid 2-bit value 3")


def test_session_survives_errors():
    """An error leaves the library usable: the same session runs good input afterwards."""
    rng = np.random.default_rng(1)
    w = sparse_weight(rng, (8, 3), "kn", np.float32)
    values, index = fmt.compress_weight(w, "kn")
    a = rng.standard_normal((2, 8)).astype(np.float32)
    model = make_model("Y = onnxsparse.MatMulCompress(A, values, index)", {"A": a}, {"Y": "float"},
                       {"values": values, "index": index})
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "K"
    session = onnxsparse.InferenceSession(model, providers=CPU)
    with pytest.raises(ORT_ERRORS, match="MatMulCompress: K of A"):
        session.run(None, {"A": np.ones((2, 12), np.float32)})
    (y,) = session.run(None, {"A": a})
    assert_close(y, matmul_reference(a, w), 8, np.float32)
