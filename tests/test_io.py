"""onnxsparse.io: every bad model file is one clear OnnxSparseError; saves are atomic; inputs untouched."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import numpy_helper

from onnxsparse import io
from onnxsparse.diff import diff_models
from onnxsparse.errors import OnnxSparseError
from onnxsparse.io import MAX_IR_VERSION, check_output_path, load_model, save_model, uses_external_data

# Weights of 32x32 floats (4 KiB): over onnx's 1 KiB threshold, so they go to external data.
TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 32] x) => (float[N, 32] y)
{
  [first] h = MatMul (x, w1)
  [second] y = MatMul (h, w2)
}
"""


def make_model() -> onnx.ModelProto:
    model = onnx.parser.parse_model(TEXT)
    rng = np.random.default_rng(0)
    for name in ("w1", "w2"):
        model.graph.initializer.append(numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), name))
    onnx.checker.check_model(model, full_check=True)
    return model


def write_external(folder: Path, name: str = "m.onnx") -> Path:
    path = folder / name
    save_model(make_model(), path, external_data=True)
    assert all((folder / location).is_file() for location in referenced_data(path))
    return path


def set_location(path: Path, location: str, out: Path | None = None) -> Path:
    """Rewrite the external-data location of every tensor of the model at ``path``."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    out = out or path
    out.write_bytes(model.SerializeToString())
    return out


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Name -> (sha256, mtime_ns) of every file in ``folder``."""
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


def assert_one_line_error(excinfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    # raised "from None": a CLI printing it shows no chained traceback
    assert excinfo.value.__cause__ is None


# --- load_model: errors --------------------------------------------------------------------------


def test_load_missing(tmp_path):
    with pytest.raises(OnnxSparseError) as excinfo:
        load_model(tmp_path / "missing.onnx")
    assert_one_line_error(excinfo, "missing.onnx", "no such file")


def test_load_directory(tmp_path):
    with pytest.raises(OnnxSparseError) as excinfo:
        load_model(tmp_path)
    assert_one_line_error(excinfo, "is a directory")


def test_load_empty(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(OnnxSparseError) as excinfo:
        load_model(path)
    assert_one_line_error(excinfo, "empty")


@pytest.mark.parametrize(
    "content",
    [b"this is not an ONNX model\n" * 10, bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8))],
    ids=["text", "random"],
)
def test_load_garbage(tmp_path, content):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(content)
    with pytest.raises(OnnxSparseError) as excinfo:
        load_model(path)
    assert_one_line_error(excinfo, "not an ONNX model")


def test_load_other_protobuf_is_not_a_model(tmp_path):
    """Bytes that parse as protobuf but hold no graph (here a TensorProto) are refused."""
    path = tmp_path / "tensor.onnx"
    path.write_bytes(numpy_helper.from_array(np.zeros(3, np.float32), "t").SerializeToString())
    with pytest.raises(OnnxSparseError) as excinfo:
        load_model(path)
    assert_one_line_error(excinfo, "not an ONNX model")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_load_truncated_model(tmp_path, keep):
    good = tmp_path / "good.onnx"
    save_model(make_model(), good)
    data = good.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(OnnxSparseError) as excinfo:
        load_model(path)
    assert_one_line_error(excinfo, "truncated.onnx", "not an ONNX model")


def test_load_external_data_missing(tmp_path):
    path = write_external(tmp_path)
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(OnnxSparseError) as excinfo:
        load_model(path)
    assert_one_line_error(excinfo, "m.onnx.data", "missing")
    # Without external data the graph itself still loads.
    assert len(load_model(path, load_external_data=False).graph.node) == 2


@pytest.mark.parametrize("location", ["../m.onnx.data", "sub/../../m.onnx.data", "ABSOLUTE"])
def test_load_external_data_outside_folder(tmp_path, location):
    inner = tmp_path / "inner"
    inner.mkdir()
    write_external(tmp_path)  # the data really exists one folder up: it must still be refused
    if location == "ABSOLUTE":
        location = str(tmp_path / "m.onnx.data")
    path = set_location(tmp_path / "m.onnx", location, out=inner / "m.onnx")
    with pytest.raises(OnnxSparseError) as excinfo:
        load_model(path)
    assert_one_line_error(excinfo, "points outside the model's folder")


def test_load_external_data_symlink_outside_folder(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    write_external(tmp_path)
    (inner / "m.onnx.data").symlink_to(tmp_path / "m.onnx.data")
    (inner / "m.onnx").write_bytes((tmp_path / "m.onnx").read_bytes())
    with pytest.raises(OnnxSparseError) as excinfo:
        load_model(inner / "m.onnx")
    assert_one_line_error(excinfo, "points outside the model's folder")


@pytest.mark.parametrize("cut", [4, 4096, 8192])
def test_load_external_data_truncated(tmp_path, cut):
    path = write_external(tmp_path)
    data_file = tmp_path / "m.onnx.data"
    data = data_file.read_bytes()
    data_file.write_bytes(data[: len(data) - cut])
    with pytest.raises(OnnxSparseError) as excinfo:
        load_model(path)
    assert_one_line_error(excinfo, "m.onnx", "external data")


def test_load_external_data_without_length_truncated(tmp_path):
    """A tensor whose external data has no length reads the whole file: a short file is caught."""
    model = make_model()
    tensor = model.graph.initializer[0]
    (tmp_path / "w1.bin").write_bytes(tensor.raw_data[:100])
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="w1.bin")
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(OnnxSparseError) as excinfo:
        load_model(path)
    assert_one_line_error(excinfo, "'w1'", "truncated", "100 bytes, expected 4096")


def test_load_packed_4bit_tensor_is_not_truncated(tmp_path):
    """Sub-byte tensors are packed: 5 float4 values take 3 bytes, not 5 (this was a false 'truncated')."""
    model = make_model()
    packed = onnx.TensorProto(name="fp4", data_type=onnx.TensorProto.FLOAT4E2M1, dims=[5], raw_data=b"\x21\x43\x05")
    model.graph.initializer.append(packed)
    path = tmp_path / "fp4.onnx"
    path.write_bytes(model.SerializeToString())
    assert load_model(path).graph.initializer[-1].raw_data == b"\x21\x43\x05"


def test_load_valid_external_model(tmp_path):
    path = write_external(tmp_path)
    model = load_model(path)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
    assert diff_models(model, make_model()).equal
    assert uses_external_data(path)


def test_uses_external_data_on_bad_file_is_one_error(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\xff" * 64)
    assert not uses_external_data(write_model(tmp_path / "inline.onnx"))
    with pytest.raises(OnnxSparseError):
        uses_external_data(path)


def write_model(path: Path) -> Path:
    save_model(make_model(), path)
    return path


# --- save_model ----------------------------------------------------------------------------------


def test_save_embedded_is_complete_and_leaves_no_temp_files(tmp_path):
    out = tmp_path / "out.onnx"
    written = save_model(make_model(), out, external_data=False)
    assert written == [out]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
    assert diff_models(load_model(out), make_model()).equal


def test_save_external_writes_name_dot_data(tmp_path):
    out = tmp_path / "out.onnx"
    model = make_model()
    written = save_model(model, out, external_data=True)
    assert sorted(p.name for p in written) == ["out.onnx", "out.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data"]
    assert (tmp_path / "out.onnx.data").stat().st_size == 2 * 32 * 32 * 4
    raw = onnx.load(str(out), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in raw.graph.initializer)
    assert diff_models(load_model(out), make_model()).equal
    # The caller's in-memory model keeps its weights inline.
    assert all(t.data_location == onnx.TensorProto.DEFAULT and t.raw_data for t in model.graph.initializer)


def test_save_external_data_file_has_the_model_files_mode(tmp_path):
    """onnx creates the data file 0600; readers of the model must be able to read its weights too."""
    out = write_external(tmp_path)
    assert (tmp_path / "m.onnx.data").stat().st_mode & 0o777 == out.stat().st_mode & 0o777


def referenced_data(path: Path) -> set[str]:
    model = onnx.load(str(path), load_external_data=False)
    return {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}


def test_save_external_overwrites_previous_output(tmp_path):
    out = write_external(tmp_path)
    size = (tmp_path / "m.onnx.data").stat().st_size
    write_external(tmp_path)  # a new data file beside the old one, then the old one is removed
    (data,) = referenced_data(out)
    assert data != "m.onnx.data" and data.startswith("m.onnx.") and data.endswith(".data")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.onnx", data])
    assert (tmp_path / data).stat().st_size == size
    assert diff_models(load_model(out), make_model()).equal
    write_external(tmp_path)  # and back: the plain name is free again
    assert referenced_data(out) == {"m.onnx.data"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_save_caps_ir_version(tmp_path):
    model = make_model()
    model.ir_version = 14
    out = tmp_path / "out.onnx"
    save_model(model, out)
    assert onnx.load(str(out)).ir_version == MAX_IR_VERSION


@pytest.mark.parametrize("external", [False, True])
@pytest.mark.parametrize("where", ["write", "rename"])
def test_failing_write_leaves_no_partial_file(tmp_path, monkeypatch, external, where):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous output")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if where == "write":
        monkeypatch.setattr(io.Path, "write_bytes", fail)
        monkeypatch.setattr(io, "_externalized", fail)
    else:
        monkeypatch.setattr(io.os, "replace", fail)
    with pytest.raises(OnnxSparseError) as excinfo:
        save_model(make_model(), out, external_data=external)
    assert_one_line_error(excinfo, "out.onnx", "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
    assert out.read_bytes() == b"previous output"


def test_save_to_missing_folder_creates_nothing(tmp_path):
    with pytest.raises(OnnxSparseError) as excinfo:
        save_model(make_model(), tmp_path / "nope" / "out.onnx")
    assert_one_line_error(excinfo, "does not exist")
    assert not (tmp_path / "nope").exists()


def test_save_to_directory_is_refused(tmp_path):
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(OnnxSparseError) as excinfo:
        save_model(make_model(), tmp_path / "dir.onnx")
    assert_one_line_error(excinfo, "is a directory")


def test_output_may_not_be_the_input(tmp_path):
    path = write_model(tmp_path / "m.onnx")
    with pytest.raises(OnnxSparseError) as excinfo:
        check_output_path(path, inputs=[path])
    assert_one_line_error(excinfo, "overwrite the input")


# --- the input file is never modified ------------------------------------------------------------


@pytest.mark.parametrize("external_in", [False, True])
@pytest.mark.parametrize("external_out", [False, True])
def test_load_and_save_never_modify_the_input(tmp_path, external_in, external_out):
    source = tmp_path / "in"
    source.mkdir()
    if external_in:
        path = write_external(source)
    else:
        path = write_model(source / "m.onnx")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # an old mtime: any rewrite would change it
    before = snapshot(source)

    model = load_model(path)
    model.graph.node[0].name = "renamed"  # changing the loaded model does not reach the file
    save_model(model, tmp_path / "out.onnx", external_data=external_out)
    load_model(path, load_external_data=False)
    uses_external_data(path)

    assert snapshot(source) == before
    assert load_model(path).graph.node[0].name == "first"


# --- hostile tensors and external data: one line each, never an internal error --------------------


def tensor_model(mutate) -> onnx.ModelProto:
    model = make_model()
    mutate(model.graph.initializer[0])
    return model


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda t: setattr(t, "data_type", 0), "data_type 0"),
        (lambda t: setattr(t, "data_type", 999), "data_type 999"),
        (lambda t: t.ClearField("raw_data"), "but no data"),
        (lambda t: setattr(t, "raw_data", t.raw_data[:100]), "expected 4096"),
        (lambda t: setattr(t, "raw_data", t.raw_data + b"1234"), "expected 4096"),
        (lambda t: t.dims.__setitem__(0, -4), "negative dimension"),
    ],
)
def test_hostile_tensor_is_one_line(tmp_path, mutate, fragment):
    path = tmp_path / "m.onnx"
    path.write_bytes(tensor_model(mutate).SerializeToString())
    with pytest.raises(OnnxSparseError) as excinfo:
        load_model(path)
    assert_one_line_error(excinfo, "m.onnx", fragment)
    assert "expected -" not in str(excinfo.value)  # never "expected -512"


@pytest.mark.parametrize(
    "location, fragment",
    [("loop.bin", "symlink loop"), ("a\0b", "NUL"), ("x" * 300, "over 255 bytes"), ("dangling", "symlink")],
)
def test_hostile_external_location_is_one_line(tmp_path, location, fragment):
    write_external(tmp_path)
    (tmp_path / "loop.bin").symlink_to("loop.bin")
    (tmp_path / "dangling").symlink_to("nowhere")
    path = set_location(tmp_path / "m.onnx", location)
    for load in (load_model, io.load_model_graph):
        with pytest.raises(OnnxSparseError) as excinfo:
            load(path)
        assert_one_line_error(excinfo, fragment)


def test_non_utf8_names_are_one_line(tmp_path):
    model = make_model()
    model.graph.node[0].name = "NODEAAAA"
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString().replace(b"NODEAAAA", b"N\xff\xfeDAAAA"))
    with pytest.raises(OnnxSparseError) as excinfo:
        load_model(path)
    assert_one_line_error(excinfo, "not valid UTF-8")


def test_output_guard_protects_every_input_file(tmp_path):
    path = write_external(tmp_path)
    for bad in ("m.onnx", "m.onnx.data"):
        with pytest.raises(OnnxSparseError) as excinfo:
            check_output_path(tmp_path / bad, inputs=[path])
        assert_one_line_error(excinfo, "overwrite the input")
    for bad in ("", "a\0b"):
        with pytest.raises(OnnxSparseError):
            check_output_path(bad, inputs=[path])


def test_replacing_an_output_never_removes_an_input_file(tmp_path):
    """The old output referred to the input's data file (a copy of the input model): keep it."""
    path = write_external(tmp_path)
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(path.read_bytes())  # refers to m.onnx.data
    save_model(make_model(), copy, external_data=True, inputs=[path])
    assert (tmp_path / "m.onnx.data").is_file()
    assert diff_models(load_model(path), make_model()).equal


def test_stale_staging_folders_are_removed_by_the_next_save(tmp_path):
    dead = tmp_path / ".onnxsparse-staging-999999999-abc"  # no such process
    dead.mkdir()
    (dead / "data").write_bytes(b"partial")
    alive = tmp_path / f".onnxsparse-staging-{os.getpid()}-abc"
    alive.mkdir()
    save_model(make_model(), tmp_path / "out.onnx")
    assert not dead.exists() and alive.exists()


def test_large_model_is_saved_with_external_data_without_serializing_it_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "EXTERNAL_DATA_THRESHOLD", 1000)
    monkeypatch.setattr(onnx.ModelProto, "ByteSize", lambda self: (_ for _ in ()).throw(AssertionError("ByteSize")),
                        raising=False)
    written = save_model(make_model(), tmp_path / "big.onnx")
    assert [p.name for p in written] == ["big.onnx.data", "big.onnx"]
