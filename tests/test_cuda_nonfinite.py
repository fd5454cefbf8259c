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
from conftest import cuda_reason
from test_nonfinite import (CONV_CASES, DTYPES, assert_same_nonfinite, conv_models, infinities_at_kept_positions,
                            matmul_models, nhwc_relu, relu_keeping_nan)


pytestmark = [pytest.mark.cuda, pytest.mark.skipif(cuda_reason() is not None, reason=cuda_reason() or "")]

# TF32 off: the dense reference must compute fp32 products in fp32, as the sparse kernels do.
CUDA = [("CUDAExecutionProvider", {"use_tf32": "0"})]


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], sparse: bool) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if sparse:
        session = onnxsparse.InferenceSession(model, sess_options=options, providers=CUDA)
    else:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=CUDA)
    return session.run(None, feeds)[0]


# M=1/5: the own small-M kernel; 64/256 with K % 128 == 0: cuSPARSELt or the own kernel by timing.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n,trans_a", [(1, 64, 40, 0), (5, 36, 17, 0), (64, 256, 72, 0), (20, 72, 33, 1),
                                           (256, 512, 384, 0)])
def test_matmul_nonfinite_like_cuda_dense(dtype, m, k, n, trans_a):
    a, values, index, dense, const, fed, rtol = matmul_models(dtype, m, k, n, trans_a, m * 1000 + k + n)
    expected = run(dense, {"A": a.astype(np.float32)}, sparse=False).astype(np.float64)
    assert np.isnan(expected).any() and np.isinf(expected).any()  # the case tests both
    for model, feeds in ((const, {"A": a}), (fed, {"A": a, "values": values, "index": index})):
        assert_same_nonfinite(run(model, feeds, sparse=True), expected, rtol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_nonfinite_like_cuda_dense(dtype, case):
    x, values, index, dense, const, fed, rtol = conv_models(dtype, case)
    expected = run(dense, {"X": x.astype(np.float32)}, sparse=False).astype(np.float64)
    assert np.isnan(expected).any() and np.isinf(expected).any()
    for model, feeds in ((const, {"X": x}), (fed, {"X": x, "values": values, "index": index})):
        assert_same_nonfinite(run(model, feeds, sparse=True), expected, rtol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [c for c in CONV_CASES if "group" not in CONV_CASES[c][6]])
def test_conv_nhwc_layout_relu_nonfinite_like_cuda_dense(dtype, case):
    """layout "NHWC" with a ReLU: the ReLU runs in the product's epilogue (cuSPARSELt's, or a pass over
    the own kernel's rows) before the fix-up; a NaN input still makes every output of its row NaN."""
    x, _, _, dense, const, _, rtol = conv_models(dtype, case)
    expected = relu_keeping_nan(run(dense, {"X": x.astype(np.float32)}, sparse=False).astype(np.float64))
    assert np.isnan(expected).any() and np.isinf(expected).any()
    assert_same_nonfinite(run(nhwc_relu(const), {"X": x}, sparse=True), expected, rtol)


@pytest.mark.parametrize("m", [1, 64])
def test_nonfinite_under_cuda_graph_replay(m):
    """Captured with a finite input, replayed with NaN/Inf in it (the input updated in place): the
    scan and the fix-up inside the graph give the dense positions; replayed with the finite input
    again, the output is the first one bit for bit (the flag is cleared on every replay)."""
    a, values, index, dense, const, _, rtol = matmul_models("float16", m, 256, 72, 0, 7 + m)
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


@pytest.mark.parametrize("activation", ["Relu", None])
def test_nhwc_layout_infinities_at_kept_positions_like_dense(activation):
    """Infinities at positions the weight keeps: +Inf and -Inf products (Inf - Inf), or an infinity
    times a kept zero, make the dense product NaN; products of one sign stay +-Inf, and the dense
    ReLU makes -Inf 0. cuSPARSELt 0.8.0 returned NaN for a -Inf output on the H200 (with or without
    its fused ReLU), and its product alone cannot see the pruned zeros; the fix-up writes these
    outputs as dense does. cuSPARSELt serves every row (M = 64, not timed against the own kernel)."""
    from onnxsparse.session import session_options

    model, x, expected = infinities_at_kept_positions(activation)
    opts = session_options(cuda_small_m_max=32, cuda_own_timed_m_max=0)
    opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CUDAExecutionProvider"])
    for _ in range(2):
        assert_same_nonfinite(session.run(None, {"X": x})[0], expected, DTYPES["float16"][1])
