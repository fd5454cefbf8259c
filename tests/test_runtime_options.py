"""The library's run-time options: ``onnxsparse.*`` session config entries, set through
``onnxsparse.session_options(**options)`` and read once when the library is registered.

An option changes what the kernels do (the CPU instruction set, visible in the VERBOSE line the
kernel logs through ONNX Runtime's logger, and the same result on every path), a bad value fails
the registration with a message naming the key, an unknown keyword is refused before anything is
registered, and an environment variable overrides the session's entry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnxruntime as ort
import pytest

import onnxsparse
from onnxsparse import format as fmt
from onnxsparse.session import RUNTIME_OPTIONS, session_options
from conftest import CPU_FLAGS, ISA_FLAGS


pytestmark = pytest.mark.kernels
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

K, N, M = 64, 32, 3


HAS_AVX2 = ISA_FLAGS["avx2"] <= CPU_FLAGS
HAS_AVX512 = ISA_FLAGS["avx512"] <= CPU_FLAGS


def _model() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """MatMulCompress with a constant 2:4 weight (the fast CPU kernels), its input and numpy's result."""
    rng = np.random.default_rng(0)
    dense = fmt.prune_weight_magnitude(rng.standard_normal((K, N)).astype(np.float32), "kn")
    values, index = fmt.compress_weight(dense, "kn")
    model = onnx.parser.parse_model(f"""
        <ir_version: 10, opset_import: ["" : 17, "onnxsparse" : 1]>
        g (float[{M},{K}] a) => (float[{M},{N}] y) {{
            y = onnxsparse.MatMulCompress <alpha = 1.0> (a, values, index)
        }}""")
    model.graph.node[0].name = "sparse_mm"
    model.graph.initializer.extend([onnx.numpy_helper.from_array(values, "values"),
                                    onnx.numpy_helper.from_array(index, "index")])
    a = rng.standard_normal((M, K)).astype(np.float32)
    return model, a, a @ dense


# Runs the model in a fresh process (ONNX Runtime's log goes to that process's stderr) with the
# given runtime options at VERBOSE severity; prints the output as numbers.
_CHILD = """
import json, sys
import numpy as np
import onnx, onnxruntime as ort
from onnxsparse.session import session_options
opts = session_options(**json.loads(sys.argv[2]))
opts.log_severity_level = 0
session = ort.InferenceSession(onnx.load(sys.argv[1]).SerializeToString(), opts, providers=["CPUExecutionProvider"])
np.save(sys.argv[4], session.run(None, {"a": np.load(sys.argv[3])})[0])
"""


def _run_child(tmp_path, options: dict, env: dict | None = None) -> tuple[np.ndarray, str]:
    model, a, _ = _model()
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.save(tmp_path / "a.npy", a)
    out = tmp_path / "y.npy"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("ONNXSPARSE_") or k == "ONNXSPARSE_LIBRARY"}
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    child_env.update(env or {})
    done = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "m.onnx"), json.dumps(options),
                           str(tmp_path / "a.npy"), str(out)], env=child_env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(out), done.stderr


def _isa_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "node 'sparse_mm': CPU kernels use" in line]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("isa", ["portable", "avx2", "avx512"])
def test_cpu_isa_option_selects_the_kernels(tmp_path, isa):
    """cpu_isa=... forces that path: the kernel says so at VERBOSE severity, and computes the same."""
    if isa == "avx2" and not HAS_AVX2 or isa == "avx512" and not HAS_AVX512:
        pytest.skip(f"this processor lacks {isa}")
    _, _, ref = _model()
    y, err = _run_child(tmp_path, {"cpu_isa": isa})
    line = _isa_line(err)
    assert f"CPU kernels use {isa} (forced by onnxsparse.cpu_isa)" in line
    assert "[V:" in line  # ONNX Runtime's VERBOSE severity
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)


def test_cpu_isa_auto_takes_the_best(tmp_path):
    _, err = _run_child(tmp_path, {})
    best = "avx512" if HAS_AVX512 else "avx2" if HAS_AVX2 else "portable"
    assert f"CPU kernels use {best} (the best this processor has)" in _isa_line(err)


def test_environment_overrides_the_session_entry(tmp_path):
    """ONNXSPARSE_CPU_ISA (a developer override) wins over the session's onnxsparse.cpu_isa."""
    _, err = _run_child(tmp_path, {"cpu_isa": "avx2" if HAS_AVX2 else "auto"}, {"ONNXSPARSE_CPU_ISA": "portable"})
    assert "CPU kernels use portable" in _isa_line(err)


def test_no_verbose_line_at_the_default_severity():
    """At ONNX Runtime's default (WARNING) severity the choice is not logged: nothing on stderr."""
    model, a, ref = _model()
    code = ("import numpy as np, onnx, onnxruntime as ort, sys\n"
            "from onnxsparse.session import session_options\n"
            "s = ort.InferenceSession(sys.stdin.buffer.read(), session_options(cpu_isa='portable'),"
            " providers=['CPUExecutionProvider'])\n"
            f"s.run(None, {{'a': np.zeros(({M}, {K}), np.float32)}})\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run([sys.executable, "-c", code], input=model.SerializeToString(), env=env,
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert b"CPU kernels use" not in done.stderr


@pytest.mark.parametrize("kwargs, match", [
    ({"cpu_isa": "bogus"}, r"onnxsparse\.cpu_isa: 'bogus' is not an instruction set"),
    ({"cuda_small_m_max": "lots"}, r"onnxsparse\.cuda\.small_m_max: 'lots' is not an integer"),
    ({"cuda_own_timed_m_max": -5}, r"onnxsparse\.cuda\.own_timed_m_max: -5 is out of range"),
    ({"cuda_pack": "maybe"}, r"onnxsparse\.cuda\.pack: 'maybe' is not a boolean"),
    ({"cusparselt_max_config_id": -7}, r"onnxsparse\.cusparselt\.max_config_id: -7 is out of range"),
])
def test_bad_value_fails_with_the_key(kwargs, match):
    with pytest.raises(onnxsparse.OnnxSparseError, match=match):
        session_options(**kwargs)


def test_bad_value_fails_session_creation_without_the_python_helper():
    """Plain ONNX Runtime: the entry set by hand, the registration (hence the session) fails clearly."""
    options = ort.SessionOptions()
    options.add_session_config_entry("onnxsparse.cpu_isa", "bogus")
    with pytest.raises(Exception, match=r"onnxsparse: session config entry onnxsparse\.cpu_isa"):
        options.register_custom_ops_library(onnxsparse.get_library_path())


def test_bad_environment_override_names_the_variable(monkeypatch):
    monkeypatch.setenv("ONNXSPARSE_CUDA_PDL", "sometimes")
    with pytest.raises(onnxsparse.OnnxSparseError, match=r"ONNXSPARSE_CUDA_PDL \(overrides onnxsparse\.cuda\.pdl\)"):
        session_options()


@pytest.mark.skipif(HAS_AVX512, reason="this processor has AVX-512, so forcing it is allowed")
def test_forcing_an_isa_the_processor_lacks_is_refused():
    with pytest.raises(onnxsparse.OnnxSparseError, match="this processor lacks it"):
        session_options(cpu_isa="avx512")


def test_unknown_keyword_is_refused_before_registration():
    options = ort.SessionOptions()
    with pytest.raises(onnxsparse.OnnxSparseError, match="unknown onnxsparse runtime option.*cpu_iza"):
        session_options(options, cpu_iza="avx2")
    # nothing was registered: the same options still take valid runtime options
    session_options(options, cpu_isa="portable")


def test_options_after_registration_are_refused():
    options = session_options()
    with pytest.raises(onnxsparse.OnnxSparseError, match="before the library is registered"):
        session_options(options, cpu_isa="portable")


def test_every_keyword_is_accepted():
    """Each keyword maps to an entry the library reads (a valid value for each registers)."""
    values = {"cpu_isa": "portable", "cuda_small_m_max": 16, "cuda_own_timed_m_max": 0, "cuda_pack": False,
              "cuda_pdl": True, "cuda_persistent": False, "cuda_allow_no_cusparselt": True, "cuda_nonfinite": True,
              "cuda_int8_scaled_output": False, "cusparselt_tune": False,
              "cusparselt_cache": "off", "cusparselt_max_config_id": -1, "cusparselt_library": "/nonexistent.so",
              "log_verbose": True, "trace": False}
    assert set(values) == set(RUNTIME_OPTIONS)
    options = session_options(**values)
    assert options.get_session_config_entry("onnxsparse.cuda.small_m_max") == "16"
    assert options.get_session_config_entry("onnxsparse.cuda.pack") == "0"
    model, a, ref = _model()
    y = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"a": a})[0]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)

