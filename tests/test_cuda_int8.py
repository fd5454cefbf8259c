"""CUDA kernels of the int8 ops QMatMulCompress and QConv2dCompress (docs/ops.md "int8 ops").

Each case runs a model holding the op on the CUDA execution provider alone (CPU fallback disabled)
and compares with the numpy reference of the contract (tests/reference_ops.py): the int path is
exact, so outputs must be equal, float and quantized alike. Some cases also run ONNX Runtime's own
CPU execution of the equivalent dense quantized model (QLinearMatMul, QLinearConv, MatMulInteger),
which tests/test_int8_compile.py shows equal to the reference. Both GEMM paths are forced in turn
through the session options (the own kernel: cuda_small_m_max above M and nothing timed;
cuSPARSELt: cuda_small_m_max 0, with the exact int32 product and the library's epilogue), and the
default choice runs too. cuSPARSELt's scaled output (path "scaled", and "auto": a row-major Y, a
quantized one without Relu with N a multiple of 16, a float one with N a multiple of 4) adds two
float terms where the contract adds two integers first: a quantized element may move by one step
next to a rounding boundary, a float one by the fp32 rounding of the larger term.
Skipped, with the reason, where ONNX Runtime has no CUDA EP or the library is not built.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import cuda_reason
from onnx import TensorProto, helper, numpy_helper
from reference_ops import run_reference

from onnxsparse import format as fmt

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(cuda_reason() is not None, reason=cuda_reason() or "")]

OPSETS = [helper.make_opsetid("", 21), helper.make_opsetid("onnxsparse", 1)]
# Session options that force one GEMM path (None: the default choice).
PATHS = {
    "own": {"cuda_small_m_max": 1 << 30, "cuda_own_timed_m_max": 0},
    "cusparselt": {"cuda_small_m_max": 0, "cuda_own_timed_m_max": 0, "cuda_int8_scaled_output": False},
    "scaled": {"cuda_small_m_max": 0, "cuda_own_timed_m_max": 0},
    "auto": {},
}
ONE_STEP = ("scaled", "auto")  # paths that may run the scaled output
FLOAT_Y = (np.float32, np.float16)  # the float and fp16 forms: no y_scale, y_zero_point


def _io(name: str, dtype, shape=None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)


def _model(node: onnx.NodeProto, adtype, ydtype, inits: dict, x: str = "A") -> onnx.ModelProto:
    graph = helper.make_graph([node], "g", [_io(x, adtype)], [_io("Y", ydtype)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=OPSETS)
    model.ir_version = 10
    return model


def _session(model: onnx.ModelProto, path: str = "auto", cuda: bool = True) -> ort.InferenceSession:
    from onnxsparse.session import session_options

    opts = session_options(**PATHS[path]) if cuda else session_options()
    opts.log_severity_level = 3
    if cuda:
        opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    providers = ["CUDAExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    return ort.InferenceSession(model.SerializeToString(), opts, providers=providers)


def _weight(shape, layout: str, seed: int) -> np.ndarray:
    """A random int8 weight pruned to 2:4 along SPEC's axis (the full range, -128 included)."""
    w = np.random.default_rng(seed).integers(-128, 128, shape).astype(np.int8)
    return fmt.prune_weight_magnitude(w, layout)


def _activation(shape, dtype, seed: int) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(info.min, int(info.max) + 1, shape).astype(dtype)


def _quant_inits(n: int, adtype, ydtype, per_channel: bool, bias: bool, k: int, seed: int) -> dict:
    """Scales chosen so that a quantized output spreads over its range (not saturated flat)."""
    rng = np.random.default_rng(seed)
    # the fp16 form (Y float16) has a float16 a_scale
    inits = {"as": np.array(0.02, np.float16 if ydtype == np.float16 else np.float32),
             "azp": np.array(131 if adtype == np.uint8 else -9, adtype),
             "ws": ((rng.random(n) * 0.01 + 0.001) if per_channel else np.array(0.004)).astype(np.float32)}
    if bias:
        inits["b"] = rng.integers(-20000, 20000, n).astype(np.int32)
    if ydtype not in FLOAT_Y:
        # acc ~ sqrt(K/2) * 74 * 74; scale it to about +-60 output steps.
        inits["ys"] = np.array(0.02 * 0.004 * 74 * 74 * np.sqrt(max(k, 4) / 2) / 60, np.float32)
        inits["yzp"] = np.array(3 if ydtype == np.uint8 else -4, ydtype)
    return inits


def _qmatmul(adtype, ydtype, k: int, n: int, per_channel: bool, bias: bool, relu: bool = False, seed: int = 0):
    w = _weight((k, n), "kn", seed=k + n + seed)
    values, index = fmt.compress_weight(w, "kn")
    inits = _quant_inits(n, adtype, ydtype, per_channel, bias, k, seed)
    inputs = ["A", "as", "azp", "v", "i", "ws", "b" if bias else ""]
    if ydtype not in FLOAT_Y:
        inputs += ["ys", "yzp"]
    while inputs[-1] == "":
        inputs.pop()
    node = helper.make_node("QMatMulCompress", inputs, ["Y"], domain="onnxsparse",
                            **({"activation": "Relu"} if relu else {}))
    return _model(node, adtype, ydtype, {**inits, "v": values, "i": index}), w, inits


def _within_one_step(got: np.ndarray, expected: np.ndarray) -> None:
    """A quantized output of the scaled form: every element within one step of the exact one, and
    only rounding ties off (a few in a thousand at most)."""
    diff = np.abs(got.astype(np.int32) - expected.astype(np.int32))
    assert diff.max(initial=0) <= 1, f"{int(diff.max())} steps off"
    assert np.count_nonzero(diff) <= max(2, diff.size // 250), f"{np.count_nonzero(diff)} of {diff.size} off"


def _within_fp32_rounding(got: np.ndarray, expected: np.ndarray, model: onnx.ModelProto) -> None:
    """A float output of the scaled form: m * float(raw) + m * offset against float(raw + offset) * m,
    each term below K/2 * 255 * 128 (+ the bias) accumulator steps, rounded to fp32 (2^-24 relative)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    k = int(inits["v"].shape[1]) * 2
    step = float(np.max(inits["as"].astype(np.float32) * inits["ws"]))
    terms = k / 2 * 255 * 128 + float(np.max(np.abs(inits.get("b", np.zeros(1)))))
    # the fp16 form rounds that once more to fp16: one fp16 step (2^-11 relative) on top
    rtol = 1e-6 if got.dtype == np.float32 else 2.0**-10
    np.testing.assert_allclose(got.astype(np.float32), expected.astype(np.float32), rtol=rtol,
                               atol=step * (1 + 4 * terms / 2**24))


def _check(model: onnx.ModelProto, feeds: dict, path: str = "auto") -> np.ndarray:
    got = _session(model, path).run(None, feeds)[0]
    expected = run_reference(model, feeds)[0]
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if path in ONE_STEP and got.dtype not in FLOAT_Y:
        _within_one_step(got, expected)
    elif path in ONE_STEP:
        _within_fp32_rounding(got, expected, model)
    else:
        np.testing.assert_array_equal(got, expected)
    return got


# --- QMatMulCompress ------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["own", "cusparselt", "scaled", "auto"])
@pytest.mark.parametrize("adtype", [np.uint8, np.int8])
@pytest.mark.parametrize("ydtype", [np.float32, np.float16, np.uint8, np.int8])
@pytest.mark.parametrize("per_channel", [False, True])
def test_qmatmul_matches_reference(path, adtype, ydtype, per_channel):
    """M 1..96 (the own kernel's tiles, cuSPARSELt's rows of 32 and the remainder), K with partial
    chunks, N a multiple of 16 or not; with and without bias."""
    for m, k, n, bias in ((1, 64, 32, True), (7, 160, 24, False), (16, 128, 40, True), (45, 256, 72, True),
                          (96, 512, 48, False)):
        model, _, _ = _qmatmul(adtype, ydtype, k, n, per_channel, bias, seed=m)
        got = _check(model, {"A": _activation((m, k), adtype, seed=m)}, path)
        if ydtype not in FLOAT_Y and got.size > 8:
            assert len(np.unique(got)) > 8  # not saturated flat: the test could fail


@pytest.mark.parametrize("path", ["own", "cusparselt", "scaled"])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 31, 32, 33, 512, 4096])
def test_qmatmul_m_sweep(path, m):
    """M = 1..4096 on a layer-sized weight (K=1024, N=256), quantized uint8 output with Relu."""
    model, _, _ = _qmatmul(np.uint8, np.uint8, 1024, 256, True, True, relu=True, seed=3)
    got = _check(model, {"A": _activation((m, 1024), np.uint8, seed=m)}, path)
    assert got.min() >= 3  # Relu: nothing below the zero point


@pytest.mark.parametrize("ydtype", [np.uint8, np.int8])
@pytest.mark.parametrize("m", [32, 33, 96, 512, 4096])
def test_qmatmul_scaled_output_m_sweep(ydtype, m):
    """cuSPARSELt's scaled int8 output on a layer-sized weight (K=1024, N=256), without Relu: within
    one step of the exact form, and most elements equal; the rows under a multiple of 32 run the own
    kernel (exact)."""
    model, _, _ = _qmatmul(np.uint8, ydtype, 1024, 256, True, True, seed=5)
    feeds = {"A": _activation((m, 1024), np.uint8, seed=m)}
    got = _check(model, feeds, "scaled")
    exact = _check(model, feeds, "cusparselt")
    assert len(np.unique(got)) > 16  # spread over the range, not saturated flat
    np.testing.assert_array_equal(got[m // 32 * 32:], exact[m // 32 * 32:])


@pytest.mark.parametrize("ydtype", [np.float32, np.float16])
@pytest.mark.parametrize("m", [32, 96, 512])
def test_qmatmul_scaled_float_output_with_relu(m, ydtype):
    """A float Y: cuSPARSELt's epilogue scales, adds the float bias and applies the Relu. An fp16 Y
    takes the exact form (see the next test)."""
    model, _, _ = _qmatmul(np.uint8, ydtype, 1024, 256, True, True, relu=True, seed=6)
    got = _check(model, {"A": _activation((m, 1024), np.uint8, seed=m)}, "scaled")
    assert got.min() == 0 and got.max() > 0


@pytest.mark.parametrize("azp", [0, 131, 255])
@pytest.mark.parametrize("k", [1024, 4096])
def test_qmatmul_fp16_output_with_large_zero_point_terms(k, azp):
    """The fp16 form of a uint8 A where the shift makes large terms (cuSPARSELt's scaled fp16 output
    overflowed to infinities here on an H200: 3000-5000 of 262144 elements): exactly the reference,
    whichever path serves it."""
    model, _, _ = _qmatmul(np.uint8, np.float16, k, 1024, True, True, seed=3)
    for init in model.graph.initializer:
        if init.name == "azp":
            init.CopyFrom(numpy_helper.from_array(np.array(azp, np.uint8), "azp"))
    a = _activation((256, k), np.uint8, seed=1)
    for path in ("scaled", "auto"):
        got = _session(model, path).run(None, {"A": a})[0]
        assert np.isfinite(got.astype(np.float32)).all()
        np.testing.assert_array_equal(got, run_reference(model, {"A": a})[0])


@pytest.mark.parametrize("ydtype", [np.int8, np.float32, np.float16])
def test_qmatmul_scaled_output_runs(capfd, ydtype):
    """The scaled form is what cuSPARSELt runs for a quantized or float output (its log line says
    so), and the choice still times it against the own kernel; an fp16 output never takes it."""
    from onnxsparse.session import session_options

    model, _, _ = _qmatmul(np.int8, ydtype, 1024, 1024, True, True, seed=8)
    opts = session_options(log_verbose=True, trace=True, cuda_own_timed_m_max=4096)
    opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CUDAExecutionProvider"])
    a = _activation((256, 1024), np.int8, seed=4)
    got, expected = sess.run(None, {"A": a})[0], run_reference(model, {"A": a})[0]
    err = capfd.readouterr().err
    line = re.search(r"QMatMulCompress M=256 K=1024 N=1024 int8 \(scaled output\): cuSPARSELt (-?[0-9.]+) us", err)
    if ydtype == np.float16:  # never scaled (ScaledOutputApplies): the int32 product, exact
        assert line is None, line.group(0)
        assert re.search(r"QMatMulCompress M=256 K=1024 N=1024 int8: cuSPARSELt [0-9.]+ us", err), err[-2000:]
        np.testing.assert_array_equal(got, expected)
    elif ydtype == np.int8 or line is not None:
        assert line is not None, err[-2000:]
        assert float(line.group(1)) > 0, line.group(0)
        _within_one_step(got, expected) if ydtype == np.int8 else _within_fp32_rounding(got, expected, model)
    else:  # cuSPARSELt 0.8.0 makes no plan for int8 x int8 -> float: refused, said once, and exact
        assert "does not scale this output" in err, err[-2000:]
        assert re.search(r"QMatMulCompress M=256 K=1024 N=1024 int8: cuSPARSELt [0-9.]+ us", err), err[-2000:]
        np.testing.assert_array_equal(got, expected)


def test_a_lone_int8_model_loads_cusparselt_from_the_session_path(tmp_path):
    """In a fresh process whose only sparse op is an int8 one (no torch, nothing that loaded NVIDIA's
    wheels), cuSPARSELt comes from the path the session options name (the pip wheel onnxsparse.session
    finds), not only from the loader's search path: M=256 on the forced cuSPARSELt path runs."""
    import subprocess
    import sys

    model, _, _ = _qmatmul(np.uint8, np.uint8, 256, 64, True, True, seed=12)
    onnx.save(model, tmp_path / "m.onnx")
    a = _activation((256, 256), np.uint8, seed=12)
    np.save(tmp_path / "a.npy", a)
    code = (
        "import sys, numpy as np, onnxruntime as ort\n"
        "from onnxsparse.session import session_options\n"
        "opts = session_options(cuda_small_m_max=0, cuda_own_timed_m_max=0, cuda_int8_scaled_output=False)\n"
        "opts.add_session_config_entry('session.disable_cpu_ep_fallback', '1')\n"
        "s = ort.InferenceSession(sys.argv[1], opts, providers=['CUDAExecutionProvider'])\n"
        "np.save(sys.argv[3], s.run(None, {'A': np.load(sys.argv[2])})[0])\n")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.onnx"), str(tmp_path / "a.npy"),
                          str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), run_reference(model, {"A": a})[0])


@pytest.mark.parametrize("k,n", [(4, 1), (12, 5), (20, 7), (36, 17), (100, 33)])
@pytest.mark.parametrize("m", [1, 5, 40])
def test_qmatmul_odd_shapes(k, n, m):
    """K not a multiple of 16 or 32 (the own kernel's per-group path; cuSPARSELt refuses K % 16),
    tiny N: exact for both activation types."""
    for adtype in (np.uint8, np.int8):
        model, _, _ = _qmatmul(adtype, np.float32, k, n, True, True, seed=k)
        _check(model, {"A": _activation((m, k), adtype, seed=n)})


@pytest.mark.parametrize("path", ["own", "cusparselt"])
def test_qmatmul_odd_encodings(path):
    """Encodings SPEC allows but the compressor rarely writes: the two values in descending position
    order, and both on one element (which then holds their sum; values kept within +-63, so that the
    sum needs no int8 wrap-around, on which readings of SPEC could differ)."""
    k, n, m = 256, 64, 48
    model, _, _ = _qmatmul(np.int8, np.float32, k, n, True, True, seed=21)
    inits = {t.name: t for t in model.graph.initializer}
    values = numpy_helper.to_array(inits["v"]).copy()
    index = numpy_helper.to_array(inits["i"]).copy()
    rng = np.random.default_rng(22)
    # nibble (index0 | index1 << 2): 0x1 = both on element 1, 0x6 = both on element 2, 0x2 = positions 2, 1
    for r in range(n):
        for g in rng.choice(k // 4, size=k // 16, replace=False):
            nibble = int(rng.choice([0x1, 0x6, 0x2]))
            values[r, 2 * g], values[r, 2 * g + 1] = rng.integers(-63, 64, 2)
            shift = 4 * (g % 2)
            index[r, g // 2] = (index[r, g // 2] & ~(0xF << shift) & 0xFF) | (nibble << shift)
    inits["v"].CopyFrom(numpy_helper.from_array(values, "v"))
    inits["i"].CopyFrom(numpy_helper.from_array(index, "i"))
    _check(model, {"A": _activation((m, k), np.int8, seed=23)}, path)


@pytest.mark.parametrize("shape", [(64,), (2, 3, 64), (2, 2, 5, 64)])
def test_qmatmul_ranks(shape):
    model, _, _ = _qmatmul(np.int8, np.int8, 64, 24, True, True, seed=1)
    got = _check(model, {"A": _activation(shape, np.int8, seed=2)})
    assert got.shape == shape[:-1] + (24,)


def test_qmatmul_absent_zero_point_and_bias_in_the_middle():
    """a_zero_point "" (0) and bias "" with y_scale given: inputs absent between present ones."""
    w = _weight((64, 16), "kn", seed=4)
    values, index = fmt.compress_weight(w, "kn")
    inits = {"as": np.array(0.05, np.float32), "v": values, "i": index, "ws": np.array(0.01, np.float32),
             "ys": np.array(2.0, np.float32), "yzp": np.array(128, np.uint8)}
    node = helper.make_node("QMatMulCompress", ["A", "as", "", "v", "i", "ws", "", "ys", "yzp"], ["Y"],
                            domain="onnxsparse")
    model = _model(node, np.uint8, np.uint8, inits)
    for m in (3, 64):
        _check(model, {"A": _activation((m, 64), np.uint8, seed=m)})


@pytest.mark.parametrize("adtype", [np.uint8, np.int8])
@pytest.mark.parametrize("m", [5, 64])
def test_qmatmul_equals_ort_qlinearmatmul(adtype, m):
    """ONNX Runtime's CPU QLinearMatMul of the dense int8 weight: the same bytes."""
    k, n = 256, 96
    model, w, inits = _qmatmul(adtype, adtype, k, n, False, False, seed=9)
    dense = helper.make_node("QLinearMatMul", ["A", "as", "azp", "W", "ws", "wzp", "ys", "yzp"], ["Y"])
    dense_inits = {key: inits[key] for key in ("as", "azp", "ws", "ys", "yzp")}
    dense_model = _model(dense, adtype, adtype, {**dense_inits, "W": w, "wzp": np.array(0, np.int8)})
    a = _activation((m, k), adtype, seed=m)
    expected = _session(dense_model, cuda=False).run(None, {"A": a})[0]
    np.testing.assert_array_equal(_session(model, "cusparselt").run(None, {"A": a})[0], expected)
    _within_one_step(_session(model).run(None, {"A": a})[0], expected)  # the default: scaled where it applies


def test_qmatmul_float_form_equals_ort_matmulinteger():
    """Float output: float32(MatMulInteger(A, W, azp) + bias) * fp32(a_scale * w_scale)."""
    k, n, m = 128, 40, 70
    model, w, inits = _qmatmul(np.uint8, np.float32, k, n, True, True, seed=11)
    integer = helper.make_node("MatMulInteger", ["A", "W", "azp"], ["Y"])
    integer_model = _model(integer, np.uint8, np.int32, {"W": w, "azp": inits["azp"]})
    a = _activation((m, k), np.uint8, seed=12)
    acc = _session(integer_model, cuda=False).run(None, {"A": a})[0] + inits["b"]
    expected = acc.astype(np.float32) * (np.float32(0.02) * inits["ws"]).astype(np.float32)
    for path in ("own", "cusparselt"):
        np.testing.assert_array_equal(_session(model, path).run(None, {"A": a})[0], expected)
    _within_fp32_rounding(_session(model, "scaled").run(None, {"A": a})[0], expected, model)


def test_qmatmul_rounds_half_to_even_and_saturates():
    w = np.array([[1], [0], [0], [0]], np.int8)  # K=4, N=1: acc = A[:, 0] - azp
    values, index = fmt.compress_weight(w, "kn")
    a = np.array([[5, 0, 0, 0], [7, 0, 0, 0], [-5, 0, 0, 0], [127, 0, 0, 0], [-128, 0, 0, 0]], np.int8)
    inits = {"as": np.array(1.0, np.float32), "azp": np.array(0, np.int8), "v": values, "i": index,
             "ws": np.array(1.0, np.float32), "ys": np.array(2.0, np.float32), "yzp": np.array(0, np.int8)}
    node = helper.make_node("QMatMulCompress", ["A", "as", "azp", "v", "i", "ws", "", "ys", "yzp"], ["Y"],
                            domain="onnxsparse")
    model = _model(node, np.int8, np.int8, inits)
    assert _session(model).run(None, {"A": a})[0].ravel().tolist() == [2, 4, -2, 64, -64]
    inits["ys"] = np.array(0.25, np.float32)
    model = _model(node, np.int8, np.int8, inits)
    assert _session(model).run(None, {"A": a})[0].ravel().tolist() == [20, 28, -20, 127, -128]


def test_qmatmul_weight_fed_at_run_time():
    """values/index as graph inputs (an unfolded model): the own kernel, row sums every call."""
    w = _weight((64, 24), "kn", seed=5)
    values, index = fmt.compress_weight(w, "kn")
    inits = {"as": np.array(0.05, np.float32), "azp": np.array(7, np.uint8), "ws": np.array(0.01, np.float32)}
    node = helper.make_node("QMatMulCompress", ["A", "as", "azp", "v", "i", "ws"], ["Y"], domain="onnxsparse")
    graph = helper.make_graph([node], "g", [_io("A", np.uint8), _io("v", np.int8), _io("i", np.uint8)],
                              [_io("Y", np.float32)], [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=OPSETS)
    model.ir_version = 10
    sess = _session(model)
    for m, seed in ((3, 1), (80, 2)):
        feeds = {"A": _activation((m, 64), np.uint8, seed=seed), "v": values, "i": index}
        np.testing.assert_array_equal(sess.run(None, feeds)[0], run_reference(model, feeds)[0])
        feeds["v"] = (values // 2).astype(np.int8)  # another weight, same session
        np.testing.assert_array_equal(sess.run(None, feeds)[0], run_reference(model, feeds)[0])


@pytest.mark.parametrize("bad,message", [
    ({"ws": np.ones(5, np.float32)}, "w_scale must have shape [24]"),
    ({"as": np.ones(2, np.float32)}, "a_scale must be a scalar"),
])
def test_qmatmul_bad_input_is_an_error_status(bad, message):
    model, _, inits = _qmatmul(np.uint8, np.float32, 64, 24, True, False, seed=2)
    for init in model.graph.initializer:
        if init.name in bad:
            init.CopyFrom(numpy_helper.from_array(bad[init.name], init.name))
    with pytest.raises(Exception, match=r"QMatMulCompress: " + re.escape(message)):
        _session(model).run(None, {"A": _activation((4, 64), np.uint8, seed=1)})


def test_qmatmul_k_mismatch_is_an_error_status():
    model, _, _ = _qmatmul(np.int8, np.float32, 64, 24, True, False, seed=2)
    with pytest.raises(Exception, match=r"QMatMulCompress: K of A is 60"):
        _session(model).run(None, {"A": _activation((4, 60), np.int8, seed=1)})


def test_qmatmul_cuda_graph_replay():
    """enable_cuda_graph: captured once, replayed; the int8 op allocates and syncs only at first calls."""
    from onnxsparse.session import session_options

    for m in (8, 256):
        model, _, _ = _qmatmul(np.uint8, np.uint8, 1024, 512, True, True, seed=m)
        model.graph.input[0].CopyFrom(_io("A", np.uint8, [m, 1024]))
        model.graph.output[0].CopyFrom(_io("Y", np.uint8, [m, 512]))
        sess = ort.InferenceSession(model.SerializeToString(), session_options(),
                                    providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])
        a_host = _activation((m, 1024), np.uint8, seed=m)
        a = ort.OrtValue.ortvalue_from_numpy(a_host, "cuda", 0)
        y = ort.OrtValue.ortvalue_from_shape_and_type([m, 512], np.uint8, "cuda", 0)
        binding = sess.io_binding()
        binding.bind_ortvalue_input("A", a)
        binding.bind_ortvalue_output("Y", y)
        expected = run_reference(model, {"A": a_host})[0]
        first = None
        for _ in range(3):
            sess.run_with_iobinding(binding)
            _within_one_step(y.numpy(), expected)  # M=256: the scaled form
            first = y.numpy() if first is None else first
            np.testing.assert_array_equal(y.numpy(), first)  # replays give the same bytes


def test_qmatmul_cusparselt_int8_runs(capfd):
    """The default choice at M=128 times cuSPARSELt's int8 GEMM against the own kernel and logs both:
    cuSPARSELt must have run (a positive time), whichever wins."""
    from onnxsparse.session import session_options

    model, _, _ = _qmatmul(np.int8, np.float32, 1024, 1024, True, False, seed=7)
    opts = session_options(log_verbose=True, cuda_int8_scaled_output=False)  # the exact int32 product
    opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CUDAExecutionProvider"])
    a = _activation((128, 1024), np.int8, seed=3)
    np.testing.assert_array_equal(sess.run(None, {"A": a})[0], run_reference(model, {"A": a})[0])
    err = capfd.readouterr().err
    line = re.search(r"QMatMulCompress M=128 K=1024 N=1024 int8: cuSPARSELt (-?[0-9.]+) us, own kernel ([0-9.]+) us", err)
    assert line is not None, err[-2000:]
    assert float(line.group(1)) > 0, line.group(0)


@pytest.mark.parametrize("adtype", [np.uint8, np.int8])
@pytest.mark.parametrize("m", [1, 16, 31])
def test_qmatmul_small_m_times_cusparselt_on_padded_rows(capfd, m, adtype):
    """Below 32 rows cuSPARSELt is a candidate too, on M padded to 32 in the scratch memory: the choice
    times it against the own kernel (both in the log line), and the result is exact either way."""
    from onnxsparse.session import session_options

    model, _, _ = _qmatmul(adtype, np.float16, 1024, 1024, True, True, seed=9)
    opts = session_options(log_verbose=True, cuda_small_m_max=0, cuda_own_timed_m_max=64)
    opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CUDAExecutionProvider"])
    a = _activation((m, 1024), adtype, seed=m)
    np.testing.assert_array_equal(sess.run(None, {"A": a})[0], run_reference(model, {"A": a})[0])
    err = capfd.readouterr().err
    line = re.search(rf"QMatMulCompress M={m} K=1024 N=1024 int8: cuSPARSELt (-?[0-9.]+) us, own kernel ([0-9.]+) us",
                     err)
    assert line is not None, err[-2000:]
    assert float(line.group(1)) > 0, line.group(0)


# --- QConv2dCompress ------------------------------------------------------------------------------

def _qconv(adtype, ydtype, x_shape, oc, kernel, per_channel, bias, relu=False, seed=0, **attrs):
    c = x_shape[1]
    group = attrs.get("group", 1)
    w = _weight((oc, c // group, *kernel), "oihw", seed=seed + oc)
    values, index = fmt.compress_weight(w, "oihw")
    k = values.shape[1] * 2
    inits = _quant_inits(oc, adtype, ydtype, per_channel, bias, k, seed)
    inputs = ["X", "as", "azp", "v", "i", "ws", "b" if bias else ""]
    if ydtype not in FLOAT_Y:
        inputs += ["ys", "yzp"]
    while inputs[-1] == "":
        inputs.pop()
    node = helper.make_node("QConv2dCompress", inputs, ["Y"], domain="onnxsparse", kernel_shape=list(kernel),
                            **({"activation": "Relu"} if relu else {}), **attrs)
    return _model(node, adtype, ydtype, {**inits, "v": values, "i": index}, x="X"), w, inits


CONV_CASES = [
    # x_shape, oc, kernel, attrs
    ((1, 8, 6, 6), 16, (3, 3), {"pads": [1, 1, 1, 1]}),
    ((2, 16, 9, 7), 24, (3, 3), {"pads": [1, 0, 2, 1], "strides": [2, 1]}),
    ((2, 32, 8, 8), 64, (1, 1), {}),
    ((1, 16, 10, 10), 32, (3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    ((2, 16, 7, 7), 16, (3, 3), {"group": 2, "pads": [1, 1, 1, 1]}),
    ((1, 8, 5, 5), 8, (3, 3), {"auto_pad": "SAME_UPPER"}),
]


@pytest.mark.parametrize("path", ["own", "cusparselt"])
@pytest.mark.parametrize("adtype,ydtype", [(np.uint8, np.uint8), (np.int8, np.int8), (np.uint8, np.float32),
                                           (np.int8, np.float16),
                                           (np.int8, np.uint8)])
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_qconv_matches_reference(path, adtype, ydtype, case):
    """Padding reads a_zero_point (131 / -9): a wrong pad value changes the border outputs."""
    x_shape, oc, kernel, attrs = CONV_CASES[case]
    model, _, _ = _qconv(adtype, ydtype, x_shape, oc, kernel, per_channel=case % 2 == 0, bias=case != 2,
                         relu=case == 3, seed=case, **attrs)
    _check(model, {"X": _activation(x_shape, adtype, seed=case)}, path)


@pytest.mark.parametrize("adtype", [np.uint8, np.int8])
def test_qconv_equals_ort_qlinearconv(adtype):
    x_shape, oc, kernel = (2, 16, 12, 12), 32, (3, 3)
    model, w, inits = _qconv(adtype, adtype, x_shape, oc, kernel, per_channel=True, bias=True, seed=4,
                             pads=[1, 1, 1, 1])
    dense = helper.make_node("QLinearConv", ["X", "as", "azp", "W", "ws", "wzp", "ys", "yzp", "b"], ["Y"],
                             kernel_shape=list(kernel), pads=[1, 1, 1, 1])
    dense_inits = {key: inits[key] for key in ("as", "azp", "ws", "ys", "yzp", "b")}
    dense_model = _model(dense, adtype, adtype, {**dense_inits, "W": w, "wzp": np.zeros(oc, np.int8)}, x="X")
    x = _activation(x_shape, adtype, seed=5)
    expected = _session(dense_model, cuda=False).run(None, {"X": x})[0]
    for path in ("own", "cusparselt"):
        np.testing.assert_array_equal(_session(model, path).run(None, {"X": x})[0], expected)


def test_qconv_bad_attribute_is_an_error_status():
    model, _, _ = _qconv(np.uint8, np.float32, (1, 8, 6, 6), 8, (3, 3), True, False, seed=1)
    model.graph.node[0].attribute.append(helper.make_attribute("activation", "Gelu"))
    with pytest.raises(Exception, match=r"QConv2dCompress: attribute 'activation' must be"):
        _session(model).run(None, {"X": _activation((1, 8, 6, 6), np.uint8, seed=1)})
