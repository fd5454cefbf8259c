"""CPU kernels of the int8 ops: QMatMulCompress, QConv2dCompress and CompressOp on int8 weights.

Each op runs in ONNX Runtime from a small model in ONNX text with SPEC's compressed int8 weight as
initializers, and is compared with the numpy reference of docs/ops.md "int8 ops"
(tests/reference_ops.py): the integer sum is exact, so quantized outputs must be identical and float
outputs equal too (both compute ``float32(acc) * fp32(a_scale * w_scale[n])``). Then against ONNX
Runtime's own int8 ops on the same integers (QLinearMatMul, QLinearConv, MatMulInteger): within one
quantization step.

Every test runs once per CPU kernel path (``ONNXSPARSE_CPU_ISA=avx512|avx2|portable``), skipped
with the reason where the processor lacks it. The avx512 path needs VNNI and VBMI besides; without
them it runs the AVX2 kernel (both are covered either way).
"""

from __future__ import annotations

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

pytestmark = pytest.mark.kernels

CPU = ["CPUExecutionProvider"]
ORT_ERRORS = (ort_state.Fail, ort_state.InvalidArgument, ort_state.RuntimeException)
NAMES = {np.dtype(np.uint8): "uint8", np.dtype(np.int8): "int8", np.dtype(np.float32): "float",
         np.dtype(np.int32): "int32"}
HEADER = '<ir_version: 10, opset_import: ["" : 17, "onnxsparse" : 1]>\n'


@pytest.fixture(autouse=True, params=list(ISA_FLAGS))
def cpu_isa(request, monkeypatch):
    """Runs the test with the kernels forced onto one instruction-set path."""
    return force_cpu_isa(request.param, monkeypatch)


# --------------------------------------------------------------------------------------------
# helpers


def int8_24(rng, rows: int, k: int, low: int = -128, high: int = 127) -> np.ndarray:
    """A random int8 [rows, K] matrix with exactly 2 zeros in each group of 4 along K (some groups
    with more, so that empty slots occur)."""
    w = rng.integers(low, high + 1, (rows, k)).astype(np.int8)
    keep = np.argsort(rng.random((rows, k // 4, 4)), axis=2) < 2
    keep &= rng.random((rows, k // 4, 1)) > 0.1  # about 1 group in 10 entirely zero
    return (w.reshape(rows, k // 4, 4) * keep).reshape(rows, k).astype(np.int8)


def make_model(body: str, inputs: dict[str, np.ndarray], initializers: dict[str, np.ndarray],
               outputs: tuple[str, ...] = ("Y",)) -> onnx.ModelProto:
    decl = ", ".join(f"{NAMES[a.dtype]}[{', '.join(map(str, a.shape))}] {n}" for n, a in inputs.items())
    model = onnx.parser.parse_model(HEADER + f"g ({decl}) => ({', '.join(outputs)}) {{\n{body}\n}}")
    model.graph.initializer.extend(onnx.numpy_helper.from_array(np.asarray(a), n) for n, a in initializers.items())
    return model


def session(model: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxsparse.InferenceSession(model, sess_options=options, providers=CPU)


def run(model, feeds, threads: int = 1) -> np.ndarray:
    return session(model, threads).run(None, feeds)[0]


def run_ort(model, feeds) -> np.ndarray:
    """ONNX Runtime's own ops, without the library."""
    return ort.InferenceSession(model.SerializeToString(), providers=CPU).run(None, feeds)[0]


def random_activations(rng, shape, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)


class Case:
    """The inputs 1-8 of an int8 op: scales, zero points, weight pair, bias, output quantization."""

    def __init__(self, rng, w_rows_k: np.ndarray, a_dtype, y_dtype, *, bias=True, per_channel=True, a_zp=True,
                 relu=False, y_scale=0.05, layout="kn", shape=None):
        rows = w_rows_k.shape[0]
        values, index = fmt.compress(w_rows_k)
        half = y_dtype is not None and np.dtype(y_dtype) == np.float16  # the fp16 form: a_scale float16
        self.init = {"values": values, "index": index, "a_scale": np.float16(0.02) if half else np.float32(0.02),
                     "w_scale": (rng.random(rows).astype(np.float32) * 0.02 + 0.001) if per_channel
                     else np.array([0.004], np.float32)}
        names = ["a_scale", "", "values", "index", "w_scale", "", "", ""]
        if a_zp:
            self.init["a_zp"] = np.array(rng.integers(np.iinfo(a_dtype).min, int(np.iinfo(a_dtype).max) + 1), a_dtype)
            names[1] = "a_zp"
        if bias:
            self.init["bias"] = rng.integers(-20000, 20000, rows).astype(np.int32)
            names[5] = "bias"
        if y_dtype is not None and not half:
            self.init["y_scale"] = np.float32(y_scale)
            self.init["y_zp"] = np.array(rng.integers(np.iinfo(y_dtype).min, int(np.iinfo(y_dtype).max) + 1), y_dtype)
            names[6:8] = ["y_scale", "y_zp"]
        while names[-1] == "":
            names.pop()
        self.inputs = ", ".join(f'"{n}"' if n == "" else n for n in names)
        self.attrs = ' <activation = "Relu">' if relu else ""
        self.y_dtype = np.dtype(y_dtype if y_dtype is not None else np.float32)

    def matmul(self, a: np.ndarray) -> onnx.ModelProto:
        body = f"Y = onnxsparse.QMatMulCompress{self.attrs} (A, {self.inputs})"
        return make_model(body, {"A": a}, self.init)

    def conv(self, x: np.ndarray, attrs: str) -> onnx.ModelProto:
        extra = self.attrs[2:-1] + ", " if self.attrs else ""
        body = f"Y = onnxsparse.QConv2dCompress <{extra}{attrs}> (X, {self.inputs})"
        return make_model(body, {"X": x}, self.init)


def check_against_reference(model, feeds, y_dtype, threads: int = 1) -> np.ndarray:
    actual = run(model, feeds, threads)
    expected = run_reference(model, feeds)[0]
    assert actual.dtype == y_dtype == expected.dtype
    assert actual.shape == expected.shape
    # Exact: the integer sum is exact and both compute the same fp32 products and rounding.
    mismatch = np.flatnonzero(actual.reshape(-1) != expected.reshape(-1))
    assert mismatch.size == 0, (f"{mismatch.size} of {actual.size} differ, first at {mismatch[0]}: "
                                f"{actual.reshape(-1)[mismatch[0]]} != {expected.reshape(-1)[mismatch[0]]}")
    return actual


def raises_op_error(op: str, model, feeds, match: str):
    with pytest.raises(ORT_ERRORS) as info:
        run(model, feeds)
    message = str(info.value)
    assert f"{op}: " in message, message
    assert match in message, message


# --------------------------------------------------------------------------------------------
# QMatMulCompress against the reference

# (A's shape, N): K is A's last dimension. K: multiples of 4 not of 8, 16 or 64 among them; N not a
# multiple of 16; M from 1 to past the 64-row task and the 8-row register tile.
MATMUL_SHAPES = [
    ([12], 7),
    ([1, 4], 1),
    ([3, 20], 37),
    ([1, 64], 16),
    ([2, 5, 36], 33),
    ([2, 1, 3, 44], 17),
    ([9, 132], 48),
    ([70, 100], 100),
    ([1, 1028], 65),
    ([13, 1024], 130),
    ([11, 2084], 40),  # the AVX2 shuffle kernel's K chunks (128 pairs): two whole and a partial one
]


@pytest.mark.parametrize("a_dtype", [np.uint8, np.int8], ids=["a_u8", "a_s8"])
@pytest.mark.parametrize("y_dtype", [None, np.float16, np.uint8, np.int8], ids=["y_float", "y_f16", "y_u8", "y_s8"])
@pytest.mark.parametrize("case", range(len(MATMUL_SHAPES)))
def test_qmatmul_matches_reference(case, a_dtype, y_dtype):
    a_shape, n = MATMUL_SHAPES[case]
    rng = np.random.default_rng(case)
    k = a_shape[-1]
    # Each case varies the optional parts differently (all combinations are covered across cases).
    options = dict(bias=case % 2 == 0, per_channel=case % 3 != 1, a_zp=case % 4 != 3, relu=case % 5 in (1, 2))
    spec = Case(rng, int8_24(rng, n, k), a_dtype, y_dtype, **options)
    a = random_activations(rng, a_shape, a_dtype)
    check_against_reference(spec.matmul(a), {"A": a}, spec.y_dtype, threads=1 + case % 2)


def test_qmatmul_output_types_inferred():
    """ONNX Runtime infers Y's type from y_zero_point (absent: float, or float16 with a float16
    a_scale) for either A type."""
    rng = np.random.default_rng(0)
    for a_dtype in (np.uint8, np.int8):
        for y_dtype, name in ((None, "tensor(float)"), (np.float16, "tensor(float16)"), (np.uint8, "tensor(uint8)"),
                              (np.int8, "tensor(int8)")):
            a = random_activations(rng, (2, 8), a_dtype)
            sess = session(Case(rng, int8_24(rng, 4, 8), a_dtype, y_dtype).matmul(a))
            assert sess.get_outputs()[0].type == name


def test_qmatmul_saturates_and_relu():
    """Outputs far outside TY's range saturate at both ends; Relu clamps before quantizing."""
    rng = np.random.default_rng(5)
    for y_dtype in (np.uint8, np.int8):
        for relu in (False, True):
            spec = Case(rng, int8_24(rng, 40, 64), np.uint8, y_dtype, relu=relu, y_scale=0.001)
            a = random_activations(rng, (8, 64), np.uint8)
            y = check_against_reference(spec.matmul(a), {"A": a}, spec.y_dtype)
            info = np.iinfo(y_dtype)
            assert (y == info.max).any()
            if relu:
                assert (y >= spec.init["y_zp"]).all()
            else:
                assert (y == info.min).any()


@pytest.mark.parametrize("y_dtype", [np.uint8, np.int8], ids=["y_u8", "y_s8"])
def test_qmatmul_rounds_half_to_even(y_dtype):
    """With the multiplier 0.5, every odd sum lands on a tie: round half to even, as QuantizeLinear."""
    rng = np.random.default_rng(6)
    w = int8_24(rng, 37, 24, low=-3, high=3)
    spec = Case(rng, w, np.uint8, y_dtype, bias=False, per_channel=False, a_zp=False)
    spec.init.update(a_scale=np.float32(0.5), w_scale=np.array([1.0], np.float32), y_scale=np.float32(1.0),
                     y_zp=np.array(0, y_dtype))
    a = rng.integers(0, 6, (9, 24)).astype(np.uint8)
    y = check_against_reference(spec.matmul(a), {"A": a}, spec.y_dtype)
    sums = a.astype(np.int64) @ w.T.astype(np.int64)
    assert (sums % 2 == 1).sum() > 20  # ties occur
    info = np.iinfo(y_dtype)
    np.testing.assert_array_equal(y, np.clip(np.rint(sums * 0.5), info.min, info.max).astype(y_dtype))


@pytest.mark.parametrize("a_dtype", [np.uint8, np.int8], ids=["a_u8", "a_s8"])
def test_qmatmul_extreme_sums_exact(a_dtype):
    """The largest K (131,072) with every product at its extreme: the sum reaches 255 * 128 * K/2,
    just inside int32, and must come out exact on every path."""
    k = 131072
    w = np.zeros((16, k), np.int8)
    w[:, 0::4] = -128
    w[:, 3::4] = -128
    w[1, 3::4] = 127
    info = np.iinfo(a_dtype)
    for a_value, zp in ((info.max, info.min), (info.min, info.max), (info.max, 0)):
        spec = Case(np.random.default_rng(0), w, a_dtype, None, bias=False, per_channel=False, a_zp=False)
        spec.init["a_zp"] = np.array(zp, a_dtype)
        spec.inputs = spec.inputs.replace('""', "a_zp", 1)
        a = np.full((2, k), a_value, a_dtype)
        check_against_reference(spec.matmul(a), {"A": a}, spec.y_dtype)


@pytest.mark.parametrize("a_dtype", [np.uint8, np.int8], ids=["a_u8", "a_s8"])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 23])
def test_qmatmul_row_tiles_extreme_products(m, a_dtype):
    """Every row-tile size and remainder (the AVX2 kernel splits M into tiles of at most 8 rows, as
    even as possible; AVX-512 into 8s and a rest) with products at their extremes: A_u 255 or 0
    times -128 or 127, so that the two products of a group sum to -65280 or 64770, beyond int16
    (where vpmaddubsw would saturate). K = 44: an odd number of groups (the last pair half empty);
    N = 37: a partial last block. Exact on every path."""
    rng = np.random.default_rng(100 + m)
    k, n = 44, 37
    w = int8_24(rng, n, k)
    w = np.where(w != 0, rng.choice(np.array([-128, 127], np.int8), w.shape), 0).astype(np.int8)
    w[0] = np.where(np.arange(k) % 4 < 2, -128, 0)  # feature 0: every group's pair at -128, -128
    info = np.iinfo(a_dtype)
    a = rng.choice(np.array([info.min, info.max], a_dtype), (m, k))
    a[0] = info.max
    spec = Case(rng, w, a_dtype, None, bias=False, per_channel=m % 2 == 0, a_zp=False)
    spec.init["a_zp"] = np.array(0 if a_dtype == np.uint8 else info.min, a_dtype)
    spec.inputs = spec.inputs.replace('""', "a_zp", 1)
    check_against_reference(spec.matmul(a), {"A": a}, spec.y_dtype, threads=1 + m % 2)
    a_u = a.astype(np.int64) - int(spec.init["a_zp"])
    pair_sums = a_u[:, None, :].reshape(m, 1, k // 4, 4) * w.astype(np.int64).reshape(1, n, k // 4, 4)
    assert (pair_sums.sum(axis=3) < -32768).any()  # the test reaches past int16


@pytest.mark.parametrize("a_dtype", [np.uint8, np.int8], ids=["a_u8", "a_s8"])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 9, 17])
@pytest.mark.parametrize("weights", ["7bit_extreme", "7bit_random", "one_past_7bit"])
def test_qmatmul_7bit_weights_exact(m, a_dtype, weights):
    """Weights within 7 bits (|v| <= 64, as ONNX Runtime's quantizer writes them with reduce_range):
    every two values the AVX2 kernel sums in one vpmaddubsw word have |v| + |v'| <= 128, so it takes
    its byte-pair path; at the extremes (every value +-64, A_u 255) a word reaches 255 * 128 = 32640,
    the most int16 holds of it. One value of -65 (one_past_7bit) sends the whole weight back to the
    widening path. Exact on every path and row-tile size, against the reference."""
    rng = np.random.default_rng(200 + m)
    k, n = 1100, 41  # 275 groups: the last pair half empty, past one K chunk of the AVX2 kernel; a partial last block
    w = int8_24(rng, n, k)
    if weights == "7bit_random":
        w = np.where(w != 0, rng.integers(-64, 65, w.shape), 0).astype(np.int8)
    else:
        w = np.where(w != 0, rng.choice(np.array([-64, 64], np.int8), w.shape), 0).astype(np.int8)
        w[0] = np.where(np.arange(k) % 4 < 2, -64, 0)  # feature 0: every word at -64, -64
    if weights == "one_past_7bit":
        row, col = np.argwhere(w != 0)[len(np.argwhere(w != 0)) // 2]
        w[row, col] = -65
    info = np.iinfo(a_dtype)
    a = rng.choice(np.array([info.min, info.max], a_dtype), (m, k)) if weights != "7bit_random" else \
        random_activations(rng, (m, k), a_dtype)
    a[0] = info.max
    spec = Case(rng, w, a_dtype, None, bias=m % 2 == 1, per_channel=m % 3 != 0, a_zp=False)
    spec.init["a_zp"] = np.array(0 if a_dtype == np.uint8 else info.min, a_dtype)
    spec.inputs = spec.inputs.replace('""', "a_zp", 1)
    check_against_reference(spec.matmul(a), {"A": a}, spec.y_dtype, threads=1 + m % 2)
    if weights == "7bit_extreme":  # the words reach the bound (A_u = 255 times two values of -64)
        a_u = a.astype(np.int64) - int(spec.init["a_zp"])
        assert a_u.max() == 255 and np.abs(w).max() == 64


def test_qmatmul_unfolded_weight():
    """values/index fed at run time (an unfolded CompressOp): the weight is packed per call."""
    rng = np.random.default_rng(3)
    w = int8_24(rng, 21, 36)
    values, index = fmt.compress(w)
    body = 'Y = onnxsparse.QMatMulCompress (A, a_scale, a_zp, V, I, w_scale, bias, y_scale, y_zp)'
    init = {"a_scale": np.float32(0.03), "a_zp": np.uint8(9), "w_scale": rng.random(21).astype(np.float32) * 0.01,
            "bias": rng.integers(-999, 999, 21).astype(np.int32), "y_scale": np.float32(0.2), "y_zp": np.int8(-4)}
    a = random_activations(rng, (5, 36), np.uint8)
    model = make_model(body, {"A": a, "V": values, "I": index}, init)
    check_against_reference(model, {"A": a, "V": values, "I": index}, np.dtype(np.int8))


def test_compress_op_int8():
    """CompressOp on an int8 weight gives int8 values and SPEC's index, as format.compress_weight."""
    rng = np.random.default_rng(4)
    w = int8_24(rng, 24, 40).T.copy()  # [K, N]
    model = make_model('V, I = onnxsparse.CompressOp <layout = "kn"> (W)', {"W": w}, {}, outputs=("V", "I"))
    values, index = session(model).run(None, {"W": w})
    expected_values, expected_index = fmt.compress_weight(w, "kn")
    assert values.dtype == np.int8
    np.testing.assert_array_equal(values, expected_values)
    np.testing.assert_array_equal(index, expected_index)
    w[0, 0] = w[1, 0] = w[2, 0] = 1  # 3 non-zeros in a group
    raises_op_error("CompressOp", model, {"W": w}, "not 2:4 sparse")


# --------------------------------------------------------------------------------------------
# QConv2dCompress against the reference

# (N, C, H, W, OC, KH, KW, attributes)
CONV_CASES = [
    (1, 8, 7, 6, 20, 3, 3, "kernel_shape = [3, 3], pads = [1, 1, 1, 1]"),
    (2, 8, 9, 9, 6, 3, 2, "kernel_shape = [3, 2], group = 2, strides = [2, 1], dilations = [1, 2], pads = [0, 1, 2, 0]"),
    (1, 4, 5, 5, 17, 1, 1, 'kernel_shape = [1, 1], auto_pad = "SAME_UPPER"'),
    (1, 16, 6, 6, 32, 3, 3, 'kernel_shape = [3, 3], group = 4, auto_pad = "SAME_LOWER", strides = [2, 2]'),
    (1, 12, 11, 10, 40, 3, 3, 'kernel_shape = [3, 3], auto_pad = "VALID"'),
    (3, 36, 4, 4, 18, 1, 3, "kernel_shape = [1, 3], pads = [0, 2, 0, 1]"),
]


def conv_weight(rng, oc, c, kh, kw) -> np.ndarray:
    """An int8 [OC, C, KH, KW] weight, 2:4 along C for each (oc, kh, kw) (SPEC's "oihw" groups)."""
    rows_k = int8_24(rng, oc, kh * kw * c)
    return rows_k  # the [rows, K] view in (kh, kw, c) order is what the ops take


@pytest.mark.parametrize("a_dtype", [np.uint8, np.int8], ids=["a_u8", "a_s8"])
@pytest.mark.parametrize("y_dtype", [None, np.float16, np.uint8, np.int8], ids=["y_float", "y_f16", "y_u8", "y_s8"])
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_qconv_matches_reference(case, a_dtype, y_dtype):
    n, c, h, w, oc, kh, kw, attrs = CONV_CASES[case]
    rng = np.random.default_rng(100 + case)
    group = int(attrs.split("group = ")[1].split(",")[0]) if "group" in attrs else 1
    options = dict(bias=case % 2 == 0, per_channel=case % 3 != 1, a_zp=case != 2, relu=case in (1, 4))
    spec = Case(rng, conv_weight(rng, oc, c // group, kh, kw), a_dtype, y_dtype, **options)
    x = random_activations(rng, (n, c, h, w), a_dtype)
    check_against_reference(spec.conv(x, attrs), {"X": x}, spec.y_dtype, threads=1 + case % 2)


# --------------------------------------------------------------------------------------------
# against ONNX Runtime's own int8 ops on the same integers


def within_one_step(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    diff = np.abs(actual.astype(np.int32) - expected.astype(np.int32))
    assert diff.max(initial=0) <= 1, f"differs by up to {diff.max()}"
    assert (diff == 0).mean() >= 0.99  # ties of the rounding are rare


@pytest.mark.parametrize("a_dtype", [np.uint8, np.int8], ids=["a_u8", "a_s8"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_qmatmul_against_qlinearmatmul(a_dtype, per_channel):
    rng = np.random.default_rng(7)
    m, k, n = 6, 136, 45
    w = int8_24(rng, n, k, low=-127)
    a = random_activations(rng, (m, k), a_dtype)
    a_zp = np.array(rng.integers(-20, 20) + (128 if a_dtype == np.uint8 else 0), a_dtype)
    w_scale = (rng.random(n).astype(np.float32) * 0.01 + 0.001) if per_channel else np.float32(0.004)
    init = {"a_scale": np.float32(0.02), "a_zp": a_zp, "w_scale": w_scale, "y_scale": np.float32(0.3),
            "y_zp": np.array(100 if a_dtype == np.uint8 else -20, a_dtype), "W": w.T.copy(), "w_zp": np.zeros(n, np.int8) if per_channel else np.int8(0)}
    dense = make_model("Y = QLinearMatMul (A, a_scale, a_zp, W, w_scale, w_zp, y_scale, y_zp)", {"A": a}, init)
    values, index = fmt.compress(w)
    init.update(values=values, index=index)
    sparse = make_model("Y = onnxsparse.QMatMulCompress (A, a_scale, a_zp, values, index, w_scale, \"\", y_scale, y_zp)",
                        {"A": a}, init)
    within_one_step(run(sparse, {"A": a}), run_ort(dense, {"A": a}))


def test_qmatmul_float_against_matmulinteger():
    """The float form equals MatMulInteger, Cast and Mul by fp32(a_scale * w_scale), exactly."""
    rng = np.random.default_rng(8)
    m, k, n = 5, 72, 19
    w = int8_24(rng, n, k)
    a = random_activations(rng, (m, k), np.uint8)
    w_scale = rng.random(n).astype(np.float32) * 0.01
    values, index = fmt.compress(w)
    init = {"a_zp": np.uint8(131), "W": w.T.copy(), "scale": (np.float32(0.02) * w_scale).astype(np.float32),
            "values": values, "index": index, "a_scale": np.float32(0.02), "w_scale": w_scale}
    dense = make_model("acc = MatMulInteger (A, W, a_zp)\nf = Cast <to = 1> (acc)\nY = Mul (f, scale)", {"A": a}, init)
    sparse = make_model("Y = onnxsparse.QMatMulCompress (A, a_scale, a_zp, values, index, w_scale)", {"A": a}, init)
    np.testing.assert_array_equal(run(sparse, {"A": a}), run_ort(dense, {"A": a}))


@pytest.mark.parametrize("a_dtype", [np.uint8, np.int8], ids=["a_u8", "a_s8"])
def test_qconv_against_qlinearconv(a_dtype):
    rng = np.random.default_rng(9)
    n, c, h, w_, oc, kh, kw = 2, 16, 9, 8, 24, 3, 3
    rows_k = int8_24(rng, oc, kh * kw * c, low=-127)
    weight = fmt.from_rows_k(rows_k, "oihw", (oc, c, kh, kw))
    x = random_activations(rng, (n, c, h, w_), a_dtype)
    a_zp = np.array(7 if a_dtype == np.uint8 else -7, a_dtype)
    init = {"a_scale": np.float32(0.05), "a_zp": a_zp, "w_scale": rng.random(oc).astype(np.float32) * 0.01 + 0.001,
            "w_zp": np.zeros(oc, np.int8), "y_scale": np.float32(0.5), "y_zp": np.array(3, a_dtype),
            "bias": rng.integers(-3000, 3000, oc).astype(np.int32), "W": weight}
    attrs = "kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [1, 2]"
    dense = make_model(f"Y = QLinearConv <{attrs}> (X, a_scale, a_zp, W, w_scale, w_zp, y_scale, y_zp, bias)",
                       {"X": x}, init)
    values, index = fmt.compress(rows_k)
    init.update(values=values, index=index)
    sparse = make_model(f"Y = onnxsparse.QConv2dCompress <{attrs}> "
                        "(X, a_scale, a_zp, values, index, w_scale, bias, y_scale, y_zp)", {"X": x}, init)
    within_one_step(run(sparse, {"X": x}), run_ort(dense, {"X": x}))


# --------------------------------------------------------------------------------------------
# bad input: an error status naming the op, never a crash


def matmul_error_model(rng, a, **change):
    w = int8_24(rng, 8, 16)
    values, index = fmt.compress(w)
    init = {"a_scale": np.float32(0.1), "values": values, "index": index, "w_scale": np.full(8, 0.01, np.float32),
            "bias": np.zeros(8, np.int32), "y_scale": np.float32(0.5), "y_zp": np.uint8(1)}
    init.update({k: v for k, v in change.items() if k != "body"})
    body = change.get("body", "Y = onnxsparse.QMatMulCompress (A, a_scale, \"\", values, index, w_scale, bias, "
                              "y_scale, y_zp)")
    return make_model(body, {"A": a}, init)


@pytest.mark.parametrize("what", ["k_mismatch", "w_scale_shape", "bias_shape", "a_scale_shape", "y_scale_alone",
                                  "invalid_index", "activation", "rank5", "index_shape"])
def test_qmatmul_bad_input(what):
    rng = np.random.default_rng(11)
    a = random_activations(rng, (3, 16), np.uint8)
    expected = {
        "k_mismatch": ("K of A is 12", dict()),
        "w_scale_shape": ("w_scale must have shape [8]", dict(w_scale=np.ones(3, np.float32))),
        "bias_shape": ("bias must have shape [8]", dict(bias=np.zeros(9, np.int32))),
        "a_scale_shape": ("a_scale must be a scalar", dict(a_scale=np.ones(2, np.float32))),
        "y_scale_alone": ("both present", dict(body="Y = onnxsparse.QMatMulCompress (A, a_scale, \"\", values, index, "
                                                    "w_scale, bias, y_scale)")),
        "invalid_index": ("invalid field 3", dict(index=np.full((8, 2), 0x33, np.uint8))),
        "activation": ("activation", dict(body="Y = onnxsparse.QMatMulCompress <activation = \"Sigmoid\"> (A, "
                                              "a_scale, \"\", values, index, w_scale)")),
        "rank5": ("rank 1 to 4", dict()),
        "index_shape": ("index has shape", dict(index=np.zeros((8, 3), np.uint8))),
    }[what]
    match, change = expected
    if what == "k_mismatch":
        a = random_activations(rng, (3, 12), np.uint8)
    if what == "rank5":
        a = random_activations(rng, (1, 1, 1, 2, 16), np.uint8)
    raises_op_error("QMatMulCompress", matmul_error_model(rng, a, **change), {"A": a}, match)


def test_qmatmul_refuses_k_too_large():
    rng = np.random.default_rng(12)
    k = 131072 + 4
    values, index = fmt.compress(np.zeros((2, k), np.int8))
    init = {"a_scale": np.float32(0.1), "values": values, "index": index, "w_scale": np.float32(0.01)}
    a = np.zeros((1, k), np.uint8)
    model = make_model('Y = onnxsparse.QMatMulCompress (A, a_scale, "", values, index, w_scale)', {"A": a}, init)
    raises_op_error("QMatMulCompress", model, {"A": a}, "too large")
    del rng


def test_qconv_bad_input():
    rng = np.random.default_rng(13)
    spec = Case(rng, int8_24(rng, 8, 9 * 8), np.uint8, np.uint8)
    x = random_activations(rng, (1, 12, 5, 5), np.uint8)  # the weight expects C = 8
    raises_op_error("QConv2dCompress", spec.conv(x, "kernel_shape = [3, 3]"), {"X": x}, "channels")
    x = random_activations(rng, (1, 8, 5, 5), np.uint8)
    raises_op_error("QConv2dCompress", spec.conv(x, "kernel_shape = [3]"), {"X": x}, "kernel_shape")
    spec.init["w_scale"] = np.ones(5, np.float32)
    raises_op_error("QConv2dCompress", spec.conv(x, "kernel_shape = [3, 3]"), {"X": x}, "w_scale")
