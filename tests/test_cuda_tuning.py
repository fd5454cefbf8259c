"""When the CUDA kernels search (onnxsparse.cusparselt.tune): inference never searches; it takes the
tuning cache's choices (cuSPARSELt's configuration and the own kernel's time, both candidates at
every M >= 16), else cuSPARSELt's default algorithm and the default small-M rule, and says once that
`onnxsparse tune --provider cuda` would make it faster. `search` (what `onnxsparse tune` sets)
searches what the cache lacks and writes it.

The option's values are checked without a GPU; the rest needs onnxruntime-gpu, a GPU and the library
built with CUDA (skipped with the reason otherwise). Each GPU case runs in a new process, whose
stderr holds ONNX Runtime's log.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import pytest

from conftest import REPO, cuda_reason
from onnxsparse import format as fmt
from onnxsparse.errors import OnnxSparseError

K, N = 1024, 1536
MS = [16, 64, 256]  # both candidates at each (16 is under the small-M rule's 32)
HINT = "onnxsparse tune --provider cuda"
SEARCHED = re.compile(r"cuSPARSELt m=\d+ n=\d+ k=\d+: ids 0\.\.(-?\d+) tuned in")
CHOICE = re.compile(r"MatMulCompress M=(\d+) K=\d+ N=\d+: cuSPARSELt (-?[\d.]+) us, own kernel (-?[\d.]+) us \(([^)]*)\) -> (\w+)")


needs_gpu = pytest.mark.skipif(cuda_reason() is not None, reason=cuda_reason() or "")


@pytest.mark.kernels
@pytest.mark.parametrize("value", ["search", "cache", "off", "SEARCH", "1", "0", "true", "off"])
def test_tune_values_are_accepted(value):
    from onnxsparse.session import session_options

    session_options(cusparselt_tune=value)


@pytest.mark.kernels
def test_a_bad_tune_value_names_the_key():
    from onnxsparse.session import session_options

    with pytest.raises(OnnxSparseError, match=r"onnxsparse\.cusparselt\.tune.*search, cache or off"):
        session_options(cusparselt_tune="sometimes")


_CHILD = r"""
import sys, time
import numpy as np
import onnxruntime as ort
from onnxsparse.session import session_options

opts = session_options()
opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
session = ort.InferenceSession(sys.argv[1], opts, providers=["CUDAExecutionProvider"])
rng = np.random.default_rng(3)
outs = {}
t0 = time.perf_counter()
for m in [int(v) for v in sys.argv[3:]]:
    x = (rng.standard_normal((m, %d)) * 0.5).astype(np.float16)
    outs[f"x{m}"] = x
    outs[f"y{m}"] = session.run(None, {"X": x})[0]
print(f"first calls {time.perf_counter() - t0:.3f} s")
np.savez(sys.argv[2], **outs)
""" % K


def _model(tmp_path) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    w = rng.standard_normal((N, K)).astype(np.float32) * 0.03
    groups = w.reshape(N, -1, 4)
    keep = np.argsort(-np.abs(groups), axis=-1)[..., :2]
    mask = np.zeros(groups.shape, bool)
    np.put_along_axis(mask, keep, True, axis=-1)
    w = np.where(mask, groups, 0).reshape(N, K).astype(np.float16)
    b = (rng.standard_normal(N) * 0.02).astype(np.float16)
    values, index = fmt.compress(w)
    node = oh.make_node("MatMulCompress", ["X", "V", "I", "B"], ["Y"], domain="onnxsparse")
    graph = oh.make_graph([node], "one", [oh.make_tensor_value_info("X", onnx.TensorProto.FLOAT16, ["M", K])],
                          [oh.make_tensor_value_info("Y", onnx.TensorProto.FLOAT16, ["M", N])],
                          initializer=[onnx.numpy_helper.from_array(values, "V"),
                                       onnx.numpy_helper.from_array(index, "I"), onnx.numpy_helper.from_array(b, "B")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("onnxsparse", 1)])
    model.ir_version = 10
    onnx.save(model, str(tmp_path / "model.onnx"))
    return w.astype(np.float64), b.astype(np.float64)


def _run(tmp_path, cache, name: str, tune: str | None) -> tuple[dict, str, str]:
    env = dict(os.environ, ONNXSPARSE_CUSPARSELT_CACHE=str(cache), ONNXSPARSE_CUDA_TRACE="1",
               ONNXSPARSE_CUDA_VERBOSE="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    env.pop("ONNXSPARSE_CUSPARSELT_TUNE", None)
    if tune is not None:
        env["ONNXSPARSE_CUSPARSELT_TUNE"] = tune
    out = tmp_path / f"{name}.npz"
    done = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "model.onnx"), str(out), *map(str, MS)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(out)), done.stdout, done.stderr


def _check_outputs(outs: dict, w, b) -> None:
    for m in MS:
        ref = outs[f"x{m}"].astype(np.float64) @ w.T + b
        err = np.linalg.norm(outs[f"y{m}"].astype(np.float64) - ref) / np.linalg.norm(ref)
        assert err < 2e-3, (m, err)


@pytest.mark.cuda
@needs_gpu
def test_inference_never_searches_without_a_cache(tmp_path):
    w, b = _model(tmp_path)
    cache = tmp_path / "cache.txt"
    outs, stdout, err = _run(tmp_path, cache, "plain", None)
    _check_outputs(outs, w, b)
    assert not SEARCHED.search(err), err[-3000:]
    assert err.count(HINT) == 1, err[-3000:]
    assert not cache.exists()  # nothing searched, nothing written
    seconds = float(re.search(r"first calls ([\d.]+) s", stdout).group(1))
    assert seconds < 20, stdout  # no search: the first calls of three M take seconds at most, never minutes
    choices = {int(m): (src, who) for m, _, _, src, who in CHOICE.findall(err)}
    assert 16 not in choices  # the default small-M rule: the own kernel, cuSPARSELt not even built
    assert all(src != "tuning cache" for src, _ in choices.values()), choices


@pytest.mark.cuda
@needs_gpu
def test_search_writes_both_candidates_and_inference_takes_them(tmp_path):
    w, b = _model(tmp_path)
    cache = tmp_path / "cache.txt"
    outs, _, err = _run(tmp_path, cache, "search", "search")
    _check_outputs(outs, w, b)
    assert SEARCHED.search(err), err[-3000:]
    entries = [line.split("\t") for line in cache.read_text().splitlines()[1:] if not line.startswith("#")]
    own = {int(e[4]) for e in entries if e[9:11] == ["-1", "-1"]}
    assert own == set(MS), entries  # the own kernel measured at every M, 16 included
    searched_any = int(SEARCHED.search(err).group(1)) >= 0
    if searched_any:  # a configuration range is known safe for this cuSPARSELt and GPU
        assert {int(e[4]) for e in entries if e[10] != "-1"} == set(MS), entries
    outs, _, err = _run(tmp_path, cache, "cached", None)
    _check_outputs(outs, w, b)
    assert not SEARCHED.search(err) and HINT not in err, err[-3000:]
    choices = {int(m): (src, who) for m, _, _, src, who in CHOICE.findall(err)}
    assert set(choices) == set(MS), err[-3000:]
    assert all(src == "tuning cache" for src, _ in choices.values()), choices
