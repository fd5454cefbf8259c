"""cuSPARSELt plans shared by every weight of one problem (custom_ops/cuda/cusparselt/plans.cc).

A plan holds shapes, types and the epilogue; the compressed weight is passed per call and the fused
bias pointer, an attribute of the plan's matmul descriptor, is set to the calling weight's before a
call that differs. These cases chain layers of one shape, each with its own weight and bias, and
check against a float64 reference (rounded to fp16 after each layer) that every layer used its own
bias: in one session, across two sessions of different weights in one process, back and forth, and
under CUDA-graph replay interleaved with the other session. The trace lines say whether a plan was
made ("new") or found ("shared"), so a broken sharing fails too.
Skipped, with the reason, where ONNX Runtime has no CUDA EP or the library has no CUDA kernels.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnxruntime as ort
import pytest

from conftest import cuda_reason
from onnxsparse import format as fmt

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(cuda_reason() is not None, reason=cuda_reason() or "")]

M, WIDTH, DEPTH, ALPHA = 256, 512, 3, 0.05
TOL = 4e-3  # fp16 through three layers, each rounded


def _plan_lines(log: str, m: int, n: int, k: int) -> list[str]:
    return re.findall(rf"cuSPARSELt m={m} n={n} k={k}: (new|shared|prepared|no) plan", log)


def _session(model: onnx.ModelProto, **providers) -> ort.InferenceSession:
    from onnxsparse.session import session_options

    # The default algorithm (no cache, no search), and cuSPARSELt on every row (M above the
    # own kernel's range, not timed against it), so that every layer runs a cuSPARSELt plan.
    opts = session_options(trace=True, cusparselt_cache="off", cuda_small_m_max=32, cuda_own_timed_m_max=0)
    opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=[("CUDAExecutionProvider", providers)] if providers else ["CUDAExecutionProvider"])


def _rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    assert np.isfinite(out).all(), "non-finite output"
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def _matmul_stack(seed: int, relu: bool) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """DEPTH fp16 MatMulCompress layers [WIDTH x WIDTH] with biases: (model, input, reference)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    a = rng.standard_normal((M, WIDTH)).astype(np.float16)
    ref = a.astype(np.float64)
    prev = "A"
    for i in range(DEPTH):
        w = fmt.prune_magnitude(rng.standard_normal((WIDTH, WIDTH)).astype(np.float32)).astype(np.float16)
        b = (4 * rng.standard_normal(WIDTH)).astype(np.float16)  # large next to the product: a wrong bias shows
        values, index = fmt.compress(w)
        inits += [onnx.numpy_helper.from_array(values, f"v{i}"), onnx.numpy_helper.from_array(index, f"i{i}"),
                  onnx.numpy_helper.from_array(b, f"b{i}")]
        extra = {"activation": "Relu"} if relu else {}
        nodes.append(oh.make_node("MatMulCompress", [prev, f"v{i}", f"i{i}", f"b{i}"], [f"y{i}"], domain="onnxsparse",
                                  alpha=ALPHA, **extra))
        ref = ALPHA * ref @ w.astype(np.float64).T + b.astype(np.float64)
        if relu:
            ref = np.maximum(ref, 0.0)
        ref = ref.astype(np.float16).astype(np.float64)
        prev = f"y{i}"
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("A", onnx.TensorProto.FLOAT16, [M, WIDTH])],
                          [oh.make_tensor_value_info(prev, onnx.TensorProto.FLOAT16, [M, WIDTH])], initializer=inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("onnxsparse", 1)])
    model.ir_version = 10
    return model, a, ref


@pytest.mark.parametrize("relu", [False, True])
def test_matmul_layers_of_one_problem_share_a_plan(capfd, relu):
    model1, a1, ref1 = _matmul_stack(10, relu)
    model2, a2, ref2 = _matmul_stack(20, relu)
    assert _rel_err(ref1, ref2) > 0.5  # two different stacks
    s1 = _session(model1)
    assert _rel_err(s1.run(None, {"A": a1})[0].astype(np.float64), ref1) < TOL
    lines = _plan_lines(capfd.readouterr().err, M, WIDTH, WIDTH)
    assert len(lines) == DEPTH and "no" not in lines, lines
    assert lines.count("new") <= 1, lines  # the first layer's (none when an earlier case made it)
    s2 = _session(model2)  # another session, other weights and biases: the same plan
    assert _rel_err(s2.run(None, {"A": a2})[0].astype(np.float64), ref2) < TOL
    assert _plan_lines(capfd.readouterr().err, M, WIDTH, WIDTH) == ["shared"] * DEPTH
    for _ in range(2):  # back and forth: each call with its own bias
        assert _rel_err(s1.run(None, {"A": a1})[0].astype(np.float64), ref1) < TOL
        assert _rel_err(s2.run(None, {"A": a2})[0].astype(np.float64), ref2) < TOL


def test_cuda_graph_replay_keeps_its_bias_while_another_session_runs():
    model1, a1, ref1 = _matmul_stack(30, False)
    model2, a2, ref2 = _matmul_stack(40, False)
    other = _session(model2)
    graphed = _session(model1, enable_cuda_graph="1")
    x = ort.OrtValue.ortvalue_from_numpy(a1, "cuda", 0)
    y = ort.OrtValue.ortvalue_from_shape_and_type([M, WIDTH], np.float16, "cuda", 0)
    binding = graphed.io_binding()
    binding.bind_ortvalue_input("A", x)
    binding.bind_ortvalue_output(f"y{DEPTH - 1}", y)
    for _ in range(4):
        graphed.run_with_iobinding(binding)
        assert _rel_err(y.numpy().astype(np.float64), ref1) < TOL
        assert _rel_err(other.run(None, {"A": a2})[0].astype(np.float64), ref2) < TOL


def _conv_stack(seed: int, x_shape, oc: int) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """Two fp16 Conv2dCompress 3x3 pad 1 layers (C = OC) with biases: (model, input, reference)."""
    from test_cuda_conv_nchw import _reference

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float16)
    ref = x.astype(np.float64)
    nodes, inits = [], []
    prev = "X"
    for i in range(2):
        w = fmt.prune_weight_magnitude(0.2 * rng.standard_normal((oc, oc, 3, 3)).astype(np.float32), "oihw")
        w = w.astype(np.float16)
        b = (4 * rng.standard_normal(oc)).astype(np.float16)
        values, index = fmt.compress_weight(w, "oihw")
        inits += [onnx.numpy_helper.from_array(values, f"v{i}"), onnx.numpy_helper.from_array(index, f"i{i}"),
                  onnx.numpy_helper.from_array(b, f"b{i}")]
        nodes.append(oh.make_node("Conv2dCompress", [prev, f"v{i}", f"i{i}", f"b{i}"], [f"y{i}"], domain="onnxsparse",
                                  kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        ref = _reference(ref, w.astype(np.float64), b.astype(np.float64), [1, 1], [1, 1, 1, 1])
        ref = ref.astype(np.float16).astype(np.float64)
        prev = f"y{i}"
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("X", onnx.TensorProto.FLOAT16, list(x_shape))],
                          [oh.make_tensor_value_info(prev, onnx.TensorProto.FLOAT16, None)], initializer=inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("onnxsparse", 1)])
    model.ir_version = 10
    return model, x, ref


def test_per_image_conv_layers_share_a_plan(monkeypatch, capfd):
    """The per-image (NCHW) form's batched plans: shared, each layer with its own bias."""
    monkeypatch.setenv("ONNXSPARSE_CUDA_CONV_FORM", "nchw")
    x_shape, oc = (4, 32, 8, 8), 32
    model1, x1, ref1 = _conv_stack(50, x_shape, oc)
    model2, x2, ref2 = _conv_stack(60, x_shape, oc)
    s1, s2 = _session(model1), _session(model2)
    for _ in range(2):
        assert _rel_err(s1.run(None, {"X": x1})[0].astype(np.float64), ref1) < TOL
        assert _rel_err(s2.run(None, {"X": x2})[0].astype(np.float64), ref2) < TOL
    # The per-image plans are keyed by M = images * OH*OW and ldy = -OH*OW: n = OC, k = 9 C.
    lines = _plan_lines(capfd.readouterr().err, x_shape[0] * 64, oc, 9 * x_shape[1])
    assert len(lines) == 4 and "no" not in lines, lines
    assert lines.count("new") <= 1, lines


# Plans made ahead from the tuning cache (SparseLtWeight::Prepare): at kernel creation, on threads,
# for every problem the cache lists for the weight's shape. Each process is new: the plans, the
# in-process choices and the problems already scheduled are per process.
_CHILD = """
import sys, time
import numpy as np
import onnxruntime as ort
from onnxsparse.session import session_options

model, feed, out, cache, tune = sys.argv[1:6]
opts = session_options(trace=True, cusparselt_cache=cache, cusparselt_tune=tune, cusparselt_max_config_id=2,
                       cuda_small_m_max=32, cuda_own_timed_m_max=0)
opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
session = ort.InferenceSession(model, opts, providers=["CUDAExecutionProvider"])
time.sleep(1.0)  # the plans made ahead are ready (one selection each, under 0.4 s)
np.save(out, session.run(None, {"A": np.load(feed)})[0])
"""


def _child(tmp_path, model_path, a, cache, tune: str) -> tuple[np.ndarray, str]:
    import os
    import subprocess
    import sys

    from conftest import REPO

    np.save(tmp_path / "a.npy", a)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run([sys.executable, "-c", _CHILD, str(model_path), str(tmp_path / "a.npy"),
                           str(tmp_path / "y.npy"), str(cache), tune], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(tmp_path / "y.npy"), done.stderr


def test_plans_of_tuned_problems_are_made_ahead_in_a_new_process(tmp_path):
    model, a, ref = _matmul_stack(70, False)
    path = tmp_path / "stack.onnx"
    onnx.save(model, str(path))
    cache = tmp_path / "tuning.txt"
    out, log = _child(tmp_path, path, a, cache, "search")  # ids 0..2 searched, the choice written
    assert _rel_err(out.astype(np.float64), ref) < TOL
    assert "prepared" not in " ".join(_plan_lines(log, M, WIDTH, WIDTH))
    assert cache.is_file()
    out, log = _child(tmp_path, path, a, cache, "cache")  # a new process with that cache
    assert _rel_err(out.astype(np.float64), ref) < TOL
    assert _plan_lines(log, M, WIDTH, WIDTH) == ["prepared"] * DEPTH, log[-3000:]
