"""NaN and infinity on CUDA as on the CPU (docs/semantics.md): a compiled op's outputs are NaN, +Inf
and -Inf exactly where ONNX Runtime's dense MatMul/Gemm/Conv on CUDA puts them, through every CUDA
path (own small-M kernel, cuSPARSELt at larger M, float, fed weights, Conv's im2col GEMM per group)
and under CUDA-graph replay, where the scan and fix-up run without a host synchronisation.

Needs onnxruntime-gpu, a GPU and the library built with CUDA; skipped with the reason otherwise.
The cases and helpers are those of tests/test_nonfinite.py (CPU).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxsparse
from conftest import library_available
from onnxsparse import format as fmt
from test_nonfinite import CONV_CASES, DTYPES, assert_same_nonfinite, build, dtype_body, round_bf16, sprinkle


def _reason() -> str | None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu on a GPU machine)"
    if not library_available():
        return "the onnxsparse custom-op library is not built"
    return None


pytestmark = [pytest.mark.cuda, pytest.mark.skipif(_reason() is not None, reason=_reason() or "")]

CUDA = ["CUDAExecutionProvider"]


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], sparse: bool) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if sparse:
        session = onnxsparse.InferenceSession(model, sess_options=options, providers=CUDA)
    else:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=CUDA)
    return session.run(None, feeds)[0]


def _matmul_case(dtype: str, m: int, k: int, n: int, trans_a: int, seed: int):
    np_dtype, rtol = DTYPES[dtype]
    rng = np.random.default_rng(seed)
    w = fmt.prune_weight_magnitude(rng.standard_normal((k, n)).astype(np.float32), "kn")
    w[:4, :3] = 0.0
    w[0, :3] = 1.5  # groups that keep a single non-zero (the other slot stores a zero)
    a = sprinkle(rng, rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32),
                 m * k // 50 if m > 1 else 0)
    bias = rng.standard_normal(n).astype(np.float32)
    values, index = fmt.compress_weight(w.astype(np_dtype), "kn")
    if dtype == "bfloat16":
        a, values, w, bias = round_bf16(a), round_bf16(values), round_bf16(w), round_bf16(bias)
    a, bias = a.astype(np_dtype), bias.astype(np_dtype)
    op_line, sfx = dtype_body(dtype, f"Y = onnxsparse.MatMulCompress <alpha = 0.5, transA = {trans_a}> "
                                     f"(A, values, index, bias)", ["A", "values", "bias"])
    op_line = op_line.replace("(A, values, index, bias)", f"(A{sfx}, values{sfx}, index, bias{sfx})")
    dense = build(f"Y = Gemm <alpha = 0.5, transA = {trans_a}> (A, W, bias)", {"A": a.astype(np.float32)},
                  {"W": w.astype(np_dtype).astype(np.float32), "bias": bias.astype(np.float32)})
    out_type = "float16" if dtype == "float16" else "float"
    const = build(op_line, {"A": a}, {"values": values, "index": index, "bias": bias}, out_type)
    fed = build(op_line, {"A": a, "values": values, "index": index}, {"bias": bias}, out_type)
    return a, values, index, dense, const, fed, rtol


# M=1/5: the own small-M kernel; 64/256 with K % 128 == 0: cuSPARSELt or the own kernel by timing.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n,trans_a", [(1, 64, 40, 0), (5, 36, 17, 0), (64, 256, 72, 0), (20, 72, 33, 1),
                                           (256, 512, 384, 0)])
def test_matmul_nonfinite_like_cuda_dense(dtype, m, k, n, trans_a):
    a, values, index, dense, const, fed, rtol = _matmul_case(dtype, m, k, n, trans_a, m * 1000 + k + n)
    expected = run(dense, {"A": a.astype(np.float32)}, sparse=False).astype(np.float64)
    assert np.isnan(expected).any() and np.isinf(expected).any()  # the case tests both
    for model, feeds in ((const, {"A": a}), (fed, {"A": a, "values": values, "index": index})):
        assert_same_nonfinite(run(model, feeds, sparse=True), expected, rtol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_nonfinite_like_cuda_dense(dtype, case):
    np_dtype, rtol = DTYPES[dtype]
    batch, c, oc, h, wd, kernel, attrs = CONV_CASES[case]
    group = 2 if "group = 2" in attrs else 1
    rng = np.random.default_rng(sum(map(ord, case)))
    weight = fmt.prune_weight_magnitude(rng.standard_normal((oc, c // group, *kernel)).astype(np.float32), "oihw")
    weight[0, :4] = 0.0
    x = sprinkle(rng, rng.standard_normal((batch, c, h, wd)).astype(np.float32), 2)
    bias = rng.standard_normal(oc).astype(np.float32)
    if dtype == "bfloat16":
        x, weight, bias = round_bf16(x), round_bf16(weight), round_bf16(bias)
    x, weight, bias = x.astype(np_dtype), weight.astype(np_dtype), bias.astype(np_dtype)
    values, index = fmt.compress_weight(weight, "oihw")
    conv_attrs = f"kernel_shape = [{kernel[0]}, {kernel[1]}]" + (f", {attrs}" if attrs else "")
    dense = build(f"Y = Conv <{conv_attrs}> (X, W, B)", {"X": x.astype(np.float32)},
                  {"W": weight.astype(np.float32), "B": bias.astype(np.float32)})
    expected = run(dense, {"X": x.astype(np.float32)}, sparse=False).astype(np.float64)
    assert np.isnan(expected).any() and np.isinf(expected).any()
    op_line, sfx = dtype_body(dtype, f"Y = onnxsparse.Conv2dCompress <{conv_attrs}> (X, values, index, B)",
                              ["X", "values", "B"])
    op_line = op_line.replace("(X, values, index, B)", f"(X{sfx}, values{sfx}, index, B{sfx})")
    out_type = "float16" if dtype == "float16" else "float"
    const = build(op_line, {"X": x}, {"values": values, "index": index, "B": bias}, out_type)
    fed = build(op_line, {"X": x, "values": values, "index": index}, {"B": bias}, out_type)
    for model, feeds in ((const, {"X": x}), (fed, {"X": x, "values": values, "index": index})):
        assert_same_nonfinite(run(model, feeds, sparse=True), expected, rtol)


@pytest.mark.parametrize("m", [1, 64])
def test_nonfinite_under_cuda_graph_replay(m):
    """Captured with a finite input, replayed with NaN/Inf in it (the input updated in place): the
    scan and the fix-up inside the graph give the dense positions; replayed with the finite input
    again, the output is the first one bit for bit (the flag is cleared on every replay)."""
    a, values, index, dense, const, _, rtol = _matmul_case("float16", m, 256, 72, 0, 7 + m)
    clean = np.nan_to_num(a.astype(np.float32), nan=0.5, posinf=1.0, neginf=-1.0).astype(np.float16)
    expected = run(dense, {"A": a.astype(np.float32)}, sparse=False).astype(np.float64)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    session = onnxsparse.InferenceSession(const, sess_options=options,
                                          providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])
    x = ort.OrtValue.ortvalue_from_numpy(clean, "cuda", 0)
    y = ort.OrtValue.ortvalue_from_shape_and_type([m, 72], np.float16, "cuda", 0)
    binding = session.io_binding()
    binding.bind_ortvalue_input("A", x)
    binding.bind_ortvalue_output("Y", y)
    for _ in range(3):  # warm-up runs, then the capture
        session.run_with_iobinding(binding)
    first = y.numpy().copy()
    assert np.isfinite(first).all()
    x.update_inplace(a)
    session.run_with_iobinding(binding)
    assert_same_nonfinite(y.numpy(), expected, rtol)
    x.update_inplace(clean)
    session.run_with_iobinding(binding)
    np.testing.assert_array_equal(y.numpy(), first)
