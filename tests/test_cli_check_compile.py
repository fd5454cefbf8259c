"""``onnxsparse check`` and ``onnxsparse compile`` run as a user runs them, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import REPO, make_model, random_input, sparse_weight
from reference_ops import run_reference

HEAD = '<ir_version: 10, opset_import: ["" : 17]>'


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("ONNXSPARSE_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "onnxsparse", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def mixed_model() -> onnx.ModelProto:
    """One eligible MatMul, one Conv refused because C/group = 1 (depthwise)."""
    model = make_model(
        f"""{HEAD} g (float[2,8] x, float[1,4,5,5] img) => (float[2,4] y, float[1,4,3,3] c) {{
        y = MatMul(x, W)
        c = Conv<group=4>(img, D) }}""",
        W=sparse_weight((8, 4), "kn"),
        D=np.ones((4, 1, 3, 3), np.float32),
    )
    model.graph.node[0].name, model.graph.node[1].name = "fc", "depthwise"
    return model


@pytest.fixture
def model_path(tmp_path) -> Path:
    path = tmp_path / "net.onnx"
    onnx.save(mixed_model(), path)
    return path


# --- check -------------------------------------------------------------------------------------------


def test_check_prints_a_table_per_layer(model_path):
    proc = cli("check", model_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["node", "op", "weight", "shape", "dtype", "2:4", "eligible"]
    assert lines[1].split()[:7] == ["fc", "MatMul", "W", "[8,", "4]", "float", "100.0%"]
    assert lines[1].endswith("eligible")
    assert lines[2].split()[:3] == ["depthwise", "Conv", "D"]
    assert lines[2].endswith("no: C/group = 1 is not a multiple of 4")
    assert lines[-1] == "1 of 2 layers eligible"


def test_check_json(model_path):
    proc = cli("check", model_path, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [(layer["node"], layer["eligible"], layer["reason"]) for layer in report["layers"]] == [
        ("fc", True, None),
        ("depthwise", False, "C/group = 1 is not a multiple of 4"),
    ]
    assert report["layers"][0]["share"] == 1.0 and report["layers"][0]["shape"] == [8, 4]


def test_check_exits_0_when_nothing_is_eligible(tmp_path):
    path = tmp_path / "dense.onnx"
    onnx.save(make_model(f"{HEAD} g (float[2,8] x) => (float[2,4] y) {{ y = MatMul(x, W) }}",
                         W=np.ones((8, 4), np.float32)), path)
    proc = cli("check", path)
    assert proc.returncode == 0
    assert "no: 100.0% of groups have more than 2 non-zeros" in proc.stdout


# --- compile -----------------------------------------------------------------------------------------


def test_compile_writes_default_output_and_reports(model_path):
    before = model_path.read_bytes()
    proc = cli("compile", model_path)
    assert proc.returncode == 0, proc.stderr
    out = model_path.with_name("net.sparse.onnx")
    assert out.is_file()
    assert model_path.read_bytes() == before
    assert "rewrote 1 of 2 layers (folded):" in proc.stdout
    assert "fc: MatMul -> fc_sparse (weight W [8, 4] float)" in proc.stdout
    assert "depthwise: Conv: C/group = 1 is not a multiple of 4" in proc.stdout
    assert "weight bytes: " in proc.stdout and f"wrote {out}" in proc.stdout

    compiled = onnx.load(out)
    assert compiled.ir_version <= 10
    assert [node.op_type for node in compiled.graph.node] == ["MatMulCompress", "Conv"]
    feeds = {"x": random_input((2, 8)), "img": random_input((1, 4, 5, 5))}
    for got, want in zip(run_reference(compiled, feeds), run_reference(mixed_model(), feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_compile_output_option_no_fold_and_json(model_path, tmp_path):
    out = tmp_path / "sub" / "out.onnx"
    out.parent.mkdir()
    proc = cli("compile", model_path, "-o", out, "--no-fold", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["output"] == str(out) and result["folded"] is False and result["rewritten"] == 1
    assert result["weight_bytes_before"] == result["weight_bytes_after"]  # CompressOp keeps the dense weight
    assert "CompressOp" in [node.op_type for node in onnx.load(out).graph.node]


def test_compile_with_nothing_eligible_writes_the_model_unchanged(tmp_path):
    path = tmp_path / "dense.onnx"
    onnx.save(make_model(f"{HEAD} g (float[2,6] x) => (float[2,4] y) {{ y = MatMul(x, W) }}",
                         W=np.ones((6, 4), np.float32)), path)
    proc = cli("compile", path)
    assert proc.returncode == 0, proc.stderr
    assert "nothing was rewritten: no layer is eligible" in proc.stdout
    assert "K = 6 is not a multiple of 4" in proc.stdout
    out = tmp_path / "dense.sparse.onnx"
    assert onnx.load(out).SerializeToString() == onnx.load(path).SerializeToString()


def test_compile_external_data_in_and_out(tmp_path):
    path = tmp_path / "big.onnx"
    model = make_model(f"{HEAD} g (float[2,64] x) => (float[2,32] y) {{ y = MatMul(x, W) }}",
                       W=sparse_weight((64, 32), "kn"))
    onnx.save(onnx.ModelProto.FromString(model.SerializeToString()), path, save_as_external_data=True, location="big.onnx.data", size_threshold=0)
    data_before = (tmp_path / "big.onnx.data").read_bytes()
    proc = cli("compile", path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "big.sparse.onnx"
    assert (tmp_path / "big.sparse.onnx.data").is_file()
    assert any(t.data_location == onnx.TensorProto.EXTERNAL
               for t in onnx.load(out, load_external_data=False).graph.initializer)
    assert (tmp_path / "big.onnx.data").read_bytes() == data_before
    feeds = {"x": random_input((2, 64))}
    np.testing.assert_allclose(run_reference(onnx.load(out), feeds)[0], run_reference(model, feeds)[0], rtol=1e-5, atol=1e-5)


# --- bad input: one line, exit 2, no traceback, nothing written ---------------------------------------


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = mixed_model().SerializeToString()
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "text.onnx").write_text("this is not a model\n" * 10)
    (tmp_path / "truncated.onnx").write_bytes(good[: len(good) // 2])
    (tmp_path / "folder.onnx").mkdir()
    model = make_model(f"{HEAD} g (float[2,8] x) => (float[2,4] y) {{ y = MatMul(x, W) }}", W=sparse_weight((8, 4), "kn"))
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.data", size_threshold=0)
    (tmp_path / "ext.data").unlink()
    outside = onnx.load(tmp_path / "ext.onnx", load_external_data=False)
    for tensor in outside.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../escape.data"
    onnx.save(outside, tmp_path / "outside.onnx")
    return {
        "missing": (tmp_path / "nope.onnx", "no such file"),
        "empty": (tmp_path / "empty.onnx", "file is empty"),
        "not_onnx": (tmp_path / "text.onnx", "not an ONNX model"),
        "truncated": (tmp_path / "truncated.onnx", "not an ONNX model"),
        "directory": (tmp_path / "folder.onnx", "is a directory"),
        "external_missing": (tmp_path / "ext.onnx", "external data file 'ext.data' is missing"),
        "external_outside": (tmp_path / "outside.onnx", "points outside the model's folder"),
    }


BAD = ["missing", "empty", "not_onnx", "truncated", "directory", "external_missing", "external_outside"]


@pytest.mark.parametrize("command", ["check", "compile"])
@pytest.mark.parametrize("kind", BAD)
def test_bad_input_is_one_line(tmp_path, command, kind):
    path, message = bad_inputs(tmp_path)[kind]
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    proc = cli(command, path)
    assert_one_line_error(proc, f"onnxsparse {command}: error:", message)
    after = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # input untouched, nothing written


def test_compile_output_folder_missing(model_path, tmp_path):
    before = model_path.read_bytes()
    proc = cli("compile", model_path, "-o", tmp_path / "no" / "such" / "out.onnx")
    assert_one_line_error(proc, "does not exist")
    assert not (tmp_path / "no").exists()
    assert model_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx"]


def test_compile_output_folder_unwritable_in_process(model_path, tmp_path, monkeypatch, capsys):
    # Root writes into read-only folders, so this one fakes the permission check in-process.
    from onnxsparse import cli as onnxsparse_cli
    from onnxsparse import io as onnxsparse_io

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(onnxsparse_io.os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    assert onnxsparse_cli.main(["compile", str(model_path), "-o", str(locked / "out.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not writable" in err[0]
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders (see the in-process test)")
def test_compile_output_folder_unwritable(model_path, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        proc = cli("compile", model_path, "-o", locked / "out.onnx")
        assert_one_line_error(proc, "is not writable")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_compile_refuses_to_overwrite_its_input(model_path):
    before = model_path.read_bytes()
    proc = cli("compile", model_path, "-o", model_path)
    assert_one_line_error(proc, "would overwrite the input model")
    assert model_path.read_bytes() == before


def test_compile_output_is_a_directory(model_path, tmp_path):
    proc = cli("compile", model_path, "-o", tmp_path)
    assert_one_line_error(proc, "is a directory")


@pytest.mark.parametrize(
    "extra, fragment",
    [(["--target", "cpu", "--dim", "batch"], "NAME=VALUE"), (["--dim", "batch=2"], "--dim only informs")],
)
def test_compile_dim_errors_are_one_line(tmp_path, extra, fragment):
    path = tmp_path / "m.onnx"
    onnx.save(mixed_model(), path)
    proc = cli("compile", path, "-o", tmp_path / "out.onnx", *extra)
    assert_one_line_error(proc, fragment)
    assert not (tmp_path / "out.onnx").exists()


def test_compile_dim_reaches_the_choice(tmp_path):
    # 768 x 3072: a shape the CPU table measured exactly (as 4096 x 4096, at 1/7 of the weights)
    model = make_model(
        f"""{HEAD} g (float[batch,768] x) => (float[batch,3072] y) {{ y = MatMul(x, W) }}""",
        W=sparse_weight((768, 3072), "kn"),
    )
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    proc = cli("compile", path, "-o", tmp_path / "out.onnx", "--target", "cpu", "--dim", "batch=1", "--json")
    assert proc.returncode == 0, proc.stderr
    import json

    layers = json.loads(proc.stdout)["layers"]
    assert len(layers) == 1 and layers[0]["rewritten"], layers


# --- outputs never touch the input's files; re-compiling; atomic pairs ---------------------------------


def external_model(tmp_path: Path, name: str = "ext.onnx", location: str = "ext.onnx.data") -> Path:
    path = tmp_path / name
    model = make_model(f"{HEAD} g (float[2,64] x) => (float[2,32] y) {{ y = MatMul(x, W) }}",
                       W=sparse_weight((64, 32), "kn"))
    onnx.save(model, path, save_as_external_data=True, location=location, size_threshold=0)
    return path


def test_compile_output_may_not_be_the_inputs_data_file(tmp_path):
    path = external_model(tmp_path, location="w.bin")
    before = (tmp_path / "w.bin").read_bytes()
    proc = cli("compile", path, "-o", tmp_path / "w.bin")
    assert_one_line_error(proc, "w.bin", "external data")
    assert (tmp_path / "w.bin").read_bytes() == before


def test_compile_output_may_not_be_a_link_to_the_input(tmp_path, model_path):
    (tmp_path / "link.onnx").symlink_to(model_path)
    os.link(model_path, tmp_path / "hard.onnx")
    before = model_path.read_bytes()
    for out in ("link.onnx", "hard.onnx"):
        assert_one_line_error(cli("compile", model_path, "-o", tmp_path / out), "overwrite the input")
    assert model_path.read_bytes() == before


def test_compile_empty_output_is_an_error(model_path):
    assert_one_line_error(cli("compile", model_path, "-o", ""), "output path is empty")


def test_recompile_external_data_and_stray_data_in_cwd(tmp_path):
    path = external_model(tmp_path)
    elsewhere, cwd = tmp_path / "elsewhere", tmp_path / "cwd"
    elsewhere.mkdir(), cwd.mkdir()
    (cwd / "x.onnx.data").write_bytes(b"stray")  # onnx's helper looked for the data file in the cwd
    for _ in range(3):  # the second and third write replace the first pair
        proc = cli("compile", path, "-o", elsewhere / "x.onnx", cwd=cwd)
        assert proc.returncode == 0, proc.stderr
        names = sorted(p.name for p in elsewhere.iterdir())
        assert len(names) == 2 and "x.onnx" in names, names
    assert (cwd / "x.onnx.data").read_bytes() == b"stray"
    feeds = {"x": random_input((2, 64))}
    np.testing.assert_allclose(run_reference(onnx.load(elsewhere / "x.onnx"), feeds)[0],
                               run_reference(onnx.load(path), feeds)[0], rtol=1e-5, atol=1e-5)


def test_force_sparse_does_not_swallow_the_model_path(model_path, tmp_path):
    out = tmp_path / "forced.onnx"
    proc = cli("compile", "--force-sparse", "fc", model_path, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "fc: MatMul -> " in proc.stdout
    # The old nargs="*" took model.onnx as a pattern; now the flag takes exactly one.
    proc = cli("compile", "--force-dense", "fc", "--force-dense", "depth*", model_path, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "nothing was rewritten" in proc.stdout


def test_compile_refuses_a_dim_the_model_does_not_have(tmp_path):
    model = make_model(f"{HEAD} g (float[batch,8] x) => (float[batch,4] y) {{ y = MatMul(x, W) }}",
                       W=sparse_weight((8, 4), "kn"))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    proc = cli("compile", path, "-o", tmp_path / "out.onnx", "--target", "cpu", "--dim", "nonexistent=4")
    assert_one_line_error(proc, "--dim nonexistent", "batch")
    assert not (tmp_path / "out.onnx").exists()


def test_checker_warning_does_not_precede_the_error(tmp_path):
    model = mixed_model()
    model.graph.initializer[0].data_type = 0  # the checker warns, then loading fails
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    assert_one_line_error(cli("compile", path), "data_type 0")


def test_long_output_name(tmp_path, model_path):
    ok = tmp_path / ("a" * 250)  # fits NAME_MAX; its data file name would not, without external data it works
    proc = cli("compile", model_path, "-o", ok)
    assert proc.returncode == 0, proc.stderr
    assert_one_line_error(cli("compile", model_path, "-o", tmp_path / ("b" * 300)), "too long")
    ext = external_model(tmp_path)
    proc = cli("compile", ext, "-o", tmp_path / ("c" * 250))  # its data file: 255 bytes, the most allowed
    assert proc.returncode == 0, proc.stderr
    for p in tmp_path.iterdir():
        if p.name.startswith("c"):
            p.unlink()
    assert_one_line_error(cli("compile", ext, "-o", tmp_path / ("c" * 252)), "too long")
    assert not any(p.name.startswith("c") or p.name.startswith(".onnxsparse") for p in tmp_path.iterdir())
