"""``onnxsparse verify``: passes a faithful compiled model, catches a wrong one, rejects bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from models.build import BUNDLED_SAMPLE

pytestmark = pytest.mark.kernels


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxsparse", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("verify") / "sample.sparse.onnx"
    assert _cli("compile", BUNDLED_SAMPLE, "-o", out).returncode == 0
    return out


def test_faithful_model_passes(compiled):
    result = _cli("verify", BUNDLED_SAMPLE, compiled, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and report["outputs"][0]["rel_l2"] < 1e-5


def test_corrupted_values_are_caught(compiled, tmp_path):
    model = onnx.load(str(compiled))
    values = next(t for t in model.graph.initializer if t.name.endswith("values"))
    array = onnx.numpy_helper.to_array(values) * 1.5
    values.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), values.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    result = _cli("verify", BUNDLED_SAMPLE, bad)
    assert result.returncode == 1
    assert "MISMATCH" in result.stdout and "FAILED" in result.stdout


@pytest.mark.parametrize("which", ["original", "compiled"])
def test_bad_input_is_one_line(compiled, tmp_path, which):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model at all")
    args = (garbage, compiled) if which == "original" else (BUNDLED_SAMPLE, garbage)
    result = _cli("verify", *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


# --- tolerances: rtol + atol like numpy.allclose, from the compute dtype -------------------------------

from onnxsparse.verify import _compare, compute_dtype, tolerances  # noqa: E402


def test_small_outputs_pass_on_absolute_tolerance():
    """A det-model-like output (max 0.0013) off by 1.8e-7: relative L2 alone called it a mismatch."""
    rng = np.random.default_rng(0)
    expected = (rng.random(1000) * 0.0013).astype(np.float32)
    expected[:500] = 1e-9  # mostly background near zero
    actual = expected + np.float32(1.8e-7)
    check = _compare("y", expected, actual, "float32", None, None)
    assert check.passed and check.atol >= 1e-5
    assert not _compare("y", expected, expected + np.float32(1e-3), "float32", None, None).passed


def test_tolerance_follows_the_compute_dtype_not_the_output_dtype():
    text = '<ir_version: 10, opset_import: ["" : 17]> g (float[2,8] x) => (float[2,4] y) ' \
           '{ xh = Cast<to=10>(x) yh = MatMul(xh, W) y = Cast<to=1>(yh) }'
    model = onnx.parser.parse_model(text)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((8, 4), np.float16), "W"))
    assert compute_dtype(model) == "float16"
    expected = np.ones((2, 4), np.float32) * 3
    actual = expected * (1 + 1.5e-3)  # fp16 rounding: far beyond fp32 tolerances, fine for fp16
    assert _compare("y", expected, actual, compute_dtype(model), None, None).passed
    assert not _compare("y", expected, actual, "float32", None, None).passed


def test_explicit_tolerances_are_used_as_given():
    expected = np.array([1.0, 0.0], np.float32)
    actual = np.array([1.001, 0.0005], np.float32)
    assert tolerances("float32", expected, 0.5, 0.25) == (0.5, 0.25)
    assert not _compare("y", expected, actual, "float32", 1e-6, 1e-6).passed
    assert _compare("y", expected, actual, "float32", 1e-2, 1e-3).passed


def test_nan_and_inf_positions_must_match():
    expected = np.array([np.nan, np.inf, 1.0], np.float32)
    assert _compare("y", expected, expected.copy(), "float32", None, None).passed
    assert not _compare("y", expected, np.array([np.nan, 1.0, 1.0], np.float32), "float32", None, None).passed


def test_rtol_and_atol_options(compiled):
    result = _cli("verify", BUNDLED_SAMPLE, compiled, "--rtol", "0", "--atol", "0", "--json")
    report = json.loads(result.stdout)
    assert report["outputs"][0]["rtol"] == 0 and report["outputs"][0]["atol"] == 0
    loose = _cli("verify", BUNDLED_SAMPLE, compiled, "--rtol", "1e-3", "--atol", "1e-4", "--json")
    assert loose.returncode == 0, loose.stderr


# --- inputs: shapes, seed, integer ranges, files fed whole, ORT's full message ---------------------------


@pytest.mark.parametrize("args, fragment", [
    (["--samples", "0"], "--samples"),
    (["--batch-size", "0"], "--batch-size"),
    (["--rtol", "-1"], "--rtol"),
    (["--int-range", "5", "1"], "--int-range"),
    (["--input-shapes", "nope:[1,2]"], "nope"),
    (["--input-shapes", "tokens:1,2"], "NAME:[D1,D2,...]"),
])
def test_bad_options_are_one_line(compiled, args, fragment):
    result = _cli("verify", BUNDLED_SAMPLE, compiled, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "internal error" not in lines[0], result.stderr


def fixed_batch_model(tmp_path):
    text = '<ir_version: 10, opset_import: ["" : 17]> g (float[4,8] x, int64[4] ids) => (float[4,8] y) ' \
           '{ y = Relu(x) }'
    path = tmp_path / "fixed.onnx"
    onnx.save(onnx.parser.parse_model(text), str(path))
    return path


def test_inputs_file_with_fixed_axis0_is_fed_whole(tmp_path):
    path = fixed_batch_model(tmp_path)
    np.savez(tmp_path / "in.npz", x=np.ones((4, 8), np.float32), ids=np.arange(4))
    result = _cli("verify", path, path, "--inputs", tmp_path / "in.npz", "--batch-size", "1")
    assert result.returncode == 0, result.stderr


def test_ort_error_keeps_its_detail(tmp_path):
    path = fixed_batch_model(tmp_path)
    text = '<ir_version: 10, opset_import: ["" : 17]> g (float[4,8] x, int64[4] ids) => (float[4,8] y) ' \
           '{ y = Reshape(x, ids) }'
    bad = tmp_path / "bad.onnx"
    onnx.save(onnx.parser.parse_model(text), str(bad))
    result = _cli("verify", bad, bad, "--int-range", "3", "4")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and "inference failed" in line and len(line) > 80, line


def test_seed_and_int_range_reach_the_inputs(tmp_path):
    from onnxsparse.prune.calibration import Calibration

    model = onnx.load(str(fixed_batch_model(tmp_path)))
    a = next(iter(Calibration(model, None, 4, 4, seed=1, int_range=(100, 103))))
    b = next(iter(Calibration(model, None, 4, 4, seed=2, int_range=(100, 103))))
    assert a["ids"].min() >= 100 and a["ids"].max() < 103
    assert not np.array_equal(a["x"], b["x"])


def test_input_shapes_give_dynamic_dims(tmp_path):
    from onnxsparse.prune.calibration import Calibration

    text = '<ir_version: 10, opset_import: ["" : 17]> g (float[N,S] x) => (float[N,S] y) { y = Relu(x) }'
    model = onnx.parser.parse_model(text)
    batch = next(iter(Calibration(model, None, 1, 1, shapes={"x": [3, 7]})))
    assert batch["x"].shape == (3, 7)
    with pytest.raises(Exception, match="expects"):
        next(iter(Calibration(model, None, 1, 1, shapes={"x": [3]})))


# --- progress on a terminal's stderr only ----------------------------------------------------------------


def on_terminal(*args) -> bytes:
    """Run the CLI with a pseudo-terminal (100 columns) as stdin, stdout and stderr; return what it showed."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        os.execvp(sys.executable, [sys.executable, "-m", "onnxsparse", *map(str, args)])
    shown = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.waitpid(pid, 0)
    return shown


def test_verify_shows_progress_with_eta_on_a_terminal_only(compiled):
    shown = on_terminal("verify", BUNDLED_SAMPLE, compiled, "--samples", 6)
    # 12 runs: the original's 6 batches, then the compiled model's (one session at a time)
    assert b"verify:" in shown and b"/12 [" in shown and b"<" in shown, shown[:300]  # [elapsed<remaining]
    assert b"/12 [" not in on_terminal("verify", BUNDLED_SAMPLE, compiled, "--samples", 6, "--quiet")
    piped = _cli("verify", BUNDLED_SAMPLE, compiled, "--samples", 6)
    assert piped.returncode == 0 and piped.stderr == ""


def test_compile_shows_elapsed_time_on_a_terminal_only(tmp_path):
    shown = on_terminal("compile", BUNDLED_SAMPLE, "-o", tmp_path / "a.onnx")
    assert b"onnxsparse compile tiny_transformer.onnx: 00:0" in shown, shown[:300]
    piped = _cli("compile", BUNDLED_SAMPLE, "-o", tmp_path / "b.onnx")
    assert piped.returncode == 0 and piped.stderr == ""


# --- sessions by path; a model over the inline limit goes through a temporary file ----------------------


def test_large_in_memory_model_opens_through_a_file(monkeypatch, tmp_path):
    import onnxsparse.session as session_module
    from onnxsparse import InferenceSession
    from onnxsparse.io import load_model
    from onnxsparse.session import open_session

    model = load_model(BUNDLED_SAMPLE)
    monkeypatch.setattr(session_module, "INLINE_LIMIT", 1000)  # "2 GB" for this test
    opened = []
    real = session_module.ort.InferenceSession.__init__

    def init(self, source, *args, **kwargs):
        opened.append(source)
        real(self, source, *args, **kwargs)

    monkeypatch.setattr(session_module.ort.InferenceSession, "__init__", init)
    serialize = onnx.ModelProto.SerializeToString

    def serialize_small(self, *args, **kwargs):  # as protobuf refuses a model over 2 GB
        large = [t.name for t in onnx.external_data_helper._get_all_tensors(self) if len(t.raw_data) >= 1024]
        assert not large, f"a model over the limit was serialized with its weights: {large[:3]}"
        return serialize(self, *args, **kwargs)

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", serialize_small)
    feeds = {i.name: np.ones([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
             for i in open_session(BUNDLED_SAMPLE, sparse=False).get_inputs()}
    dense = open_session(model, sparse=False)
    wrapped = InferenceSession(model)
    assert all(isinstance(s, str) and s.endswith("model.onnx") for s in opened[1:]), opened
    assert not any(Path(s).exists() for s in opened[1:])  # the temporary folder is gone
    np.testing.assert_array_equal(dense.run(None, feeds)[0], wrapped.run(None, feeds)[0])


def test_verify_and_bench_open_sessions_from_the_paths(monkeypatch, compiled):
    import onnxsparse.session as session_module
    from onnxsparse.bench import bench
    from onnxsparse.verify import verify

    sources = []
    real = session_module.model_source

    def spy(model):
        sources.append(model)
        return real(model)

    monkeypatch.setattr(session_module, "model_source", spy)
    assert all(c.passed for c in verify(str(BUNDLED_SAMPLE), str(compiled), samples=1))
    bench(str(BUNDLED_SAMPLE), str(compiled), runs=1, warmup=0)
    assert sources and all(isinstance(s, str) for s in sources), sources
