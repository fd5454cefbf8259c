"""Several GPUs of one host: sessions on device 0 and device 1 in one process, run at once from two
threads, each compute on their own GPU; processes on different GPUs share one tuning cache file.

Needs onnxruntime-gpu, the library built with CUDA and at least two GPUs; skipped with the reason
otherwise. The cache file's behaviour under contention without a GPU is in
tests/test_cusparselt_tuning_cache.py (onnxsparse_tuning_cache_check).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnxruntime as ort
import pytest

from conftest import REPO, cuda_reason
from onnxsparse import format as fmt

K, N, LAYERS = 1024, 1024, 4
# M of the own small-M kernel, of both candidates (M >= 16), and of cuSPARSELt's range (M > 32).
MS = [1, 16, 48, 256]
TOLERANCE = 2e-3  # ||out - ref|| / ||ref||, fp16 with fp32 accumulation


def _driver():
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    return cuda if cuda.cuInit(0) == 0 else None


def gpu_count() -> int:
    cuda = _driver()
    if cuda is None:
        return 0
    count = ctypes.c_int(0)
    return count.value if cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 else 0


def _reason() -> str | None:
    reason = cuda_reason()
    if reason is not None:
        return reason
    count = gpu_count()
    if count < 2:
        return f"needs 2 GPUs, this machine has {count}"
    return None


pytestmark = [pytest.mark.cuda, pytest.mark.skipif(_reason() is not None, reason=_reason() or "")]


def memory_used_mib(device: int) -> float:
    """Memory in use on `device` (all processes), from nvidia-smi, else the driver (cuMemGetInfo in
    the device's primary context)."""
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "-i", str(device), "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=60)
        if done.returncode == 0 and done.stdout.strip():
            return float(done.stdout.split()[0])
    cuda = _driver()
    dev, ctx = ctypes.c_int(0), ctypes.c_void_p()
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    assert cuda.cuDeviceGet(ctypes.byref(dev), device) == 0
    assert cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0
    previous = ctypes.c_void_p()
    cuda.cuCtxGetCurrent(ctypes.byref(previous))
    cuda.cuCtxSetCurrent(ctx)
    try:
        assert cuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)) == 0
    finally:
        cuda.cuCtxSetCurrent(previous)
        cuda.cuDevicePrimaryCtxRelease(dev)
    return (total.value - free.value) / 2**20


def make_other_device_current(device: int) -> None:
    """Makes `device`'s primary context current on the calling thread (what cudaSetDevice does), so
    that a kernel that trusted the thread's current device would compute on the wrong GPU."""
    cuda = _driver()
    dev, ctx = ctypes.c_int(0), ctypes.c_void_p()
    assert cuda.cuDeviceGet(ctypes.byref(dev), device) == 0
    assert cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0
    assert cuda.cuCtxSetCurrent(ctx) == 0


def _model() -> tuple[bytes, list[np.ndarray]]:
    """LAYERS chained fp16 MatMulCompress layers (constant weights, bias), X [M, K] -> Y [M, N];
    returns the model and the dense [K, N] weights with biases for the reference."""
    rng = np.random.default_rng(7)
    nodes, inits, dense = [], [], []
    x = "X"
    for i in range(LAYERS):
        w = rng.standard_normal((N, K)).astype(np.float32) * 0.03
        w = _prune(w).astype(np.float16)
        values, index = fmt.compress(w)
        b = (rng.standard_normal(N) * 0.02).astype(np.float16)
        inits += [onnx.numpy_helper.from_array(values, f"V{i}"), onnx.numpy_helper.from_array(index, f"I{i}"),
                  onnx.numpy_helper.from_array(b, f"B{i}")]
        nodes.append(oh.make_node("MatMulCompress", [x, f"V{i}", f"I{i}", f"B{i}"], [f"Y{i}"], domain="onnxsparse"))
        dense.append((w.astype(np.float64), b.astype(np.float64)))
        x = f"Y{i}"
    nodes.append(oh.make_node("Identity", [x], ["Y"]))
    graph = oh.make_graph(nodes, "chain", [oh.make_tensor_value_info("X", onnx.TensorProto.FLOAT16, ["M", K])],
                          [oh.make_tensor_value_info("Y", onnx.TensorProto.FLOAT16, ["M", N])], initializer=inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("onnxsparse", 1)])
    model.ir_version = 10
    return model.SerializeToString(), dense


def _prune(w: np.ndarray) -> np.ndarray:
    groups = w.reshape(w.shape[0], -1, 4)
    keep = np.argsort(-np.abs(groups), axis=-1)[..., :2]
    mask = np.zeros(groups.shape, bool)
    np.put_along_axis(mask, keep, True, axis=-1)
    return np.where(mask, groups, 0).reshape(w.shape)


def _reference(dense, x: np.ndarray) -> np.ndarray:
    y = x.astype(np.float64)
    for w, b in dense:
        y = (y @ w.T + b).astype(np.float16).astype(np.float64)  # each layer's output is fp16
    return y


def _rel(out, ref) -> float:
    return float(np.linalg.norm(out.astype(np.float64) - ref) / max(np.linalg.norm(ref), 1e-30))


def _session(blob: bytes, device: int, **runtime) -> ort.InferenceSession:
    from onnxsparse.session import session_options

    opts = session_options(**runtime)
    opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return ort.InferenceSession(blob, opts, providers=[("CUDAExecutionProvider", {"device_id": str(device)})])


def _run_on(session: ort.InferenceSession, device: int, x: np.ndarray) -> np.ndarray:
    """One run with input and output bound on `device` (no host copy inside the run)."""
    binding = session.io_binding()
    binding.bind_ortvalue_input("X", ort.OrtValue.ortvalue_from_numpy(x, "cuda", device))
    binding.bind_output("Y", "cuda", device)
    session.run_with_iobinding(binding)
    out = binding.get_outputs()[0]
    assert out.device_name().lower() == "cuda"
    return out.numpy()


def _inputs() -> dict[int, np.ndarray]:
    rng = np.random.default_rng(11)
    return {m: (rng.standard_normal((m, K)) * 0.5).astype(np.float16) for m in MS}


def test_two_sessions_on_two_gpus_from_two_threads(tmp_path):
    """Single-GPU outputs first (each device alone), then both sessions busy at once from two
    threads, each thread's current device set to the *other* GPU before every run: the outputs stay
    equal to the single-GPU ones and to the reference, and each device's memory grew."""
    blob, dense = _model()
    inputs = _inputs()
    refs = {m: _reference(dense, x) for m, x in inputs.items()}
    cache = str(tmp_path / "cache.txt")
    before = {d: memory_used_mib(d) for d in (0, 1)}
    sessions = {d: _session(blob, d, cusparselt_cache=cache) for d in (0, 1)}
    alone = {}
    for d in (0, 1):
        for m, x in inputs.items():
            alone[d, m] = _run_on(sessions[d], d, x)
            assert _rel(alone[d, m], refs[m]) < TOLERANCE, (d, m)
    grown = {d: memory_used_mib(d) - before[d] for d in (0, 1)}
    assert grown[0] > 0 and grown[1] > 0, grown  # weights, packed copies and cuSPARSELt's on each GPU

    errors: list[str] = []
    barrier = threading.Barrier(2)

    def serve(device: int) -> None:
        try:
            barrier.wait()
            for rep in range(30):
                for m, x in inputs.items():
                    make_other_device_current(1 - device)  # the compute thread's device is not the session's
                    out = _run_on(sessions[device], device, x)
                    # Equal up to cuSPARSELt's split-K summation order (the same kernels and choices).
                    if _rel(out, alone[device, m].astype(np.float64)) > 1e-3:
                        errors.append(f"device {device} M={m} rep {rep}: rel diff {_rel(out, alone[device, m].astype(np.float64))}")
                        return
        except Exception as exc:  # reported below, with the thread's device
            errors.append(f"device {device}: {exc!r}")

    threads = [threading.Thread(target=serve, args=(d,)) for d in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    # Outputs computed on either GPU agree (same kernels; the per-M choice may differ by timing).
    for m in MS:
        assert _rel(alone[0, m], alone[1, m].astype(np.float64)) < TOLERANCE


def test_a_session_on_the_second_gpu_alone_computes_there():
    """A session on device 1 only, run from a thread whose current device is 0: memory grows on
    device 1 (the packed weights and cuSPARSELt's compressed copy), and the output is right."""
    blob, dense = _model()
    inputs = _inputs()
    before = {d: memory_used_mib(d) for d in (0, 1)}
    session = _session(blob, 1)
    make_other_device_current(0)
    for m, x in inputs.items():
        assert _rel(_run_on(session, 1, x), _reference(dense, x)) < TOLERANCE, m
    after = {d: memory_used_mib(d) for d in (0, 1)}
    assert after[1] - before[1] > 0, (before, after)
    # Device 0 may gain a context (ONNX Runtime's or the driver's), never the weights: far less.
    assert after[0] - before[0] < 0.5 * (after[1] - before[1]) + 600, (before, after)


_PROCESS = r"""
import sys
import numpy as np
import onnxruntime as ort
from onnxsparse.session import session_options

blob_path, device, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
opts = session_options()
opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
session = ort.InferenceSession(blob_path, opts, providers=[("CUDAExecutionProvider", {"device_id": str(device)})])
rng = np.random.default_rng(11)
outs = {}
for m in [int(v) for v in sys.argv[4:]]:
    x = (rng.standard_normal((m, 1024)) * 0.5).astype(np.float16)
    outs[f"m{m}"] = session.run(None, {"X": x})[0]
np.savez(out_path, **outs)
"""


def test_processes_on_two_gpus_share_one_tuning_cache(tmp_path):
    """Four processes, two per GPU, search (onnxsparse.cusparselt.tune=search) many M at once into
    one cache file: every line of the file afterwards is a whole, valid entry, none is lost (each
    process's M are there), and a fifth process reads the file and computes the same outputs."""
    blob, dense = _model()
    model_path = tmp_path / "model.onnx"
    model_path.write_bytes(blob)
    cache = tmp_path / "cache" / "tuning.txt"
    env = dict(os.environ, ONNXSPARSE_CUSPARSELT_CACHE=str(cache), ONNXSPARSE_CUSPARSELT_TUNE="search",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    ms = {0: ["16", "48", "64"], 1: ["16", "80", "96"], 2: ["32", "112", "128"], 3: ["48", "144", "160"]}
    procs = [subprocess.Popen([sys.executable, "-c", _PROCESS, str(model_path), str(p % 2), str(tmp_path / f"p{p}.npz"),
                               *ms[p]], env=env, stderr=subprocess.PIPE, text=True) for p in ms]
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
    lines = cache.read_text().splitlines()
    assert lines[0] == "# onnxsparse cuSPARSELt tuning cache v1", lines[:2]
    entries = [line.split("\t") for line in lines[1:] if not line.startswith("#")]
    assert entries and all(len(e) == 12 for e in entries), [e for e in entries if len(e) != 12][:2]
    tool = _tool()
    if tool is not None:  # the library's own parser takes every line back
        read = subprocess.run([str(tool), "read", str(cache)], capture_output=True, text=True, timeout=60).stdout
        assert sorted(read.splitlines()) == sorted("\t".join(e) for e in entries)
    # One own-kernel entry per (M, layer shape) the processes measured: none lost to a concurrent rewrite.
    own_ms = {int(e[4]) for e in entries if e[9:11] == ["-1", "-1"]}
    assert {int(m) for group in ms.values() for m in group} <= own_ms, sorted(own_ms)
    assert not list(cache.parent.glob("*.tmp.*"))
    # A later process on GPU 1 takes everything from the file and computes the same.
    env["ONNXSPARSE_CUSPARSELT_TUNE"] = "cache"
    done = subprocess.run([sys.executable, "-c", _PROCESS, str(model_path), "1", str(tmp_path / "again.npz"), *ms[1]],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    again, first = np.load(tmp_path / "again.npz"), np.load(tmp_path / "p1.npz")
    rng = np.random.default_rng(11)
    for m in ms[1]:
        x = (rng.standard_normal((int(m), K)) * 0.5).astype(np.float16)
        assert _rel(again[f"m{m}"], _reference(dense, x)) < TOLERANCE
        assert _rel(again[f"m{m}"], first[f"m{m}"].astype(np.float64)) < TOLERANCE


def _tool():
    library = os.environ.get("ONNXSPARSE_LIBRARY")
    if library:
        candidate = os.path.join(os.path.dirname(os.path.realpath(library)), "onnxsparse_tuning_cache_check")
        if os.path.isfile(candidate):
            return candidate
    return None
