"""Streaming check, compile and diff (issue 16) give what the in-memory code gives.

``compile_model(path, output=...)`` reads each weight from its file when a pass needs it, leaves
the large pairs to the save, which compresses them as it writes the output's data file, and copies
the other weights there; the
in-memory ``compile_model(path)`` followed by ``io.save_model`` loads everything first. On models
both can handle, with the same external-data choice, the two write the same bytes: the model file
and its data file. Models over 2 GB: tests/test_big_model.py.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from conftest import HEAD, make_model, sparse_weight

from models.convnet import build_convnet
from models.external import build_mlp
from models.transformer import build_transformer
from onnxsparse import io
from onnxsparse.api import check_model, compile_model
from onnxsparse.compiler import DeferredPairs
from onnxsparse.diff import diff_files
from onnxsparse.errors import OnnxSparseError


def _subgraph_model() -> onnx.ModelProto:
    """A weight read in the main graph and inside an If, a Constant-node weight, a weight that is
    not 2:4 (stays dense and is copied), a Gemm with transB and a bfloat16 layer."""
    bf16 = onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.BFLOAT16)
    dense = np.random.default_rng(3).standard_normal((64, 32)).astype(np.float32)
    constant = onnx.numpy_helper.from_array(sparse_weight((64, 32), "kn", seed=4), "C")
    model = make_model(
        f"""{HEAD} g (float[2,64] x, bool c, bfloat16[2,64] xb) => (float[2,32] y, float[2,32] z, float[2,32] d,
                                                         float[2,32] e, bfloat16[2,32] f, float[2,32] h) {{
        y = MatMul(x, W)
        z = If(c) <then_branch = t () => (float[2,32] zt) {{ zt = MatMul(x, W) }},
                    else_branch = e () => (float[2,32] ze) {{ ze = Identity(y) }}>
        d = MatMul(x, D)
        k = Constant <value = float[1] {{0.0}}> ()
        h = MatMul(x, k)
        e = Gemm(x, G) <transB = 1>
        f = MatMul(xb, B)
        }}""",
        W=sparse_weight((64, 32), "kn", seed=1),
        D=dense,
        G=sparse_weight((32, 64), "nk", seed=2),
        B=sparse_weight((64, 32), "kn", seed=5).astype(bf16),
    )
    node = next(n for n in model.graph.node if n.op_type == "Constant")
    node.attribute[0].t.CopyFrom(constant)
    node.attribute[0].t.name = "k_value"
    return model


MODELS = {
    "mlp": lambda: build_mlp("float32"),
    "mlp_fp16": lambda: build_mlp("float16"),
    "transformer": lambda: build_transformer("float32"),
    "convnet": lambda: build_convnet("float32"),
    "subgraph": _subgraph_model,
}


def _files(folder, name="out.onnx") -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith(name)}


@pytest.fixture(scope="module", params=sorted(MODELS))
def source(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    path = folder / "model.onnx"
    io.save_model(MODELS[request.param](), path, external_data=True)
    return path


@pytest.mark.parametrize("deferred_from", [DeferredPairs.MIN_BYTES, 32 << 10], ids=["1MiB", "32KiB"])
@pytest.mark.parametrize("fold", [True, False], ids=["folded", "no-fold"])
@pytest.mark.parametrize("external_data", [True, False], ids=["external", "embedded"])
def test_streaming_compile_writes_the_same_bytes(source, tmp_path, fold, external_data, deferred_from, monkeypatch):
    """Weights from ``deferred_from`` bytes are compressed by the save (the test models' are small:
    32 KiB makes most of them so)."""
    monkeypatch.setattr(DeferredPairs, "MIN_BYTES", deferred_from)
    memory_dir, stream_dir = tmp_path / "memory", tmp_path / "stream"
    memory_dir.mkdir()
    stream_dir.mkdir()
    in_memory = compile_model(source, fold=fold)
    io.save_model(in_memory.model, memory_dir / "out.onnx", external_data=external_data)
    streamed = compile_model(source, fold=fold, output=stream_dir / "out.onnx", external_data=external_data)

    assert streamed.rewritten, "the model has eligible layers"
    expected = _files(memory_dir)
    assert set(_files(stream_dir)) == set(expected) == ({"out.onnx", "out.onnx.data"} if external_data else {"out.onnx"})
    for name, data in _files(stream_dir).items():
        assert data == expected[name], f"{name} differs between the in-memory and the streaming compile"
    assert streamed.to_dict() == in_memory.to_dict()
    assert sorted(streamed.written) == sorted(stream_dir / name for name in expected)
    assert diff_files(memory_dir / "out.onnx", stream_dir / "out.onnx").equal
    # Nothing of the save's staging is left behind.
    assert sorted(p.name for p in stream_dir.iterdir()) == sorted(expected)


def test_streaming_check_reports_as_in_memory(source):
    streamed = check_model(source).to_dict()
    in_memory = check_model(io.load_model(source)).to_dict()
    in_memory["model"] = streamed["model"]
    assert streamed == in_memory


def test_result_model_refers_to_the_written_data(source, tmp_path):
    result = compile_model(source, output=tmp_path / "out.onnx", external_data=True)
    external = [t for t in result.model.graph.initializer if io.is_external(t)]
    assert external, "the compressed weights are in the output's data file"
    data = (tmp_path / "out.onnx.data").resolve()
    assert {io.external_info(t)[0] for t in external} == {str(data)}
    reloaded = io.load_model(tmp_path / "out.onnx")
    by_name = {t.name: onnx.numpy_helper.to_array(t) for t in reloaded.graph.initializer}
    from onnxsparse.compiler.graph import tensor_array

    for tensor in external:
        np.testing.assert_array_equal(tensor_array(tensor), by_name[tensor.name])


def test_weights_in_many_files_and_small_external_tensors(tmp_path):
    """onnx's own writer with every tensor external (small ones too), one file per tensor."""
    model = build_transformer("float32")
    path = tmp_path / "model.onnx"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    assert len(list(tmp_path.iterdir())) > 10
    (tmp_path / "memory").mkdir()
    io.save_model(compile_model(path).model, tmp_path / "memory" / "out.onnx", external_data=True)
    compile_model(path, output=tmp_path / "out.onnx", external_data=True)
    assert (tmp_path / "out.onnx").read_bytes() == (tmp_path / "memory" / "out.onnx").read_bytes()
    assert (tmp_path / "out.onnx.data").read_bytes() == (tmp_path / "memory" / "out.onnx.data").read_bytes()
    opened = io.open_model(path)
    assert all(not io.is_external(t) for t in opened.graph.initializer if len(t.raw_data) and len(t.raw_data) < 1024)


def test_truncated_external_data_is_refused_before_work(tmp_path):
    path = tmp_path / "model.onnx"
    io.save_model(build_mlp("float32"), path, external_data=True)
    data = tmp_path / "model.onnx.data"
    os.truncate(data, data.stat().st_size - 100)
    for call in (lambda: io.open_model(path), lambda: check_model(path),
                 lambda: compile_model(path, output=tmp_path / "out.onnx")):
        with pytest.raises(OnnxSparseError, match="external data of tensor '.*' is truncated"):
            call()
    assert not (tmp_path / "out.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".onnxsparse-staging")]


def test_diff_hashes_weights_from_their_files(tmp_path):
    """One changed byte in a data file is a changed initializer; the same values inline and in a
    file are equal."""
    model = build_mlp("float32")
    inline, external, changed = tmp_path / "inline.onnx", tmp_path / "external.onnx", tmp_path / "changed.onnx"
    io.save_model(model, inline, external_data=False)
    io.save_model(model, external, external_data=True)
    io.save_model(model, changed, external_data=True)
    assert diff_files(inline, external).equal
    opened = io.open_model(changed)
    weight = next(t for t in opened.graph.initializer if t.name == "fc_1.weight")
    _, offset, _ = io.external_info(weight)
    with open(tmp_path / "changed.onnx.data", "r+b") as f:
        f.seek(offset + 4000)
        byte = f.read(1)
        f.seek(offset + 4000)
        f.write(bytes([byte[0] ^ 0xFF]))
    result = diff_files(external, changed)
    assert [(d.section, d.change, d.name) for d in result.differences] == [("initializer", "changed", "fc_1.weight")]


@pytest.mark.kernels
def test_session_from_a_streamed_result(tmp_path):
    """``result.model`` refers to the written data file by absolute path, which ONNX Runtime refuses
    in a serialized model: ``InferenceSession`` saves it to a temporary folder first."""
    import onnxsparse

    path = tmp_path / "model.onnx"
    io.save_model(build_mlp("float32"), path, external_data=True)
    result = compile_model(path, output=tmp_path / "out.onnx", external_data=True)
    x = np.random.default_rng(0).standard_normal((2, 256)).astype(np.float32)
    from_result = onnxsparse.InferenceSession(result.model, providers=["CPUExecutionProvider"]).run(None, {"features": x})
    from_file = onnxsparse.InferenceSession(str(result.output), providers=["CPUExecutionProvider"]).run(None, {"features": x})
    np.testing.assert_array_equal(from_result[0], from_file[0])


def test_deferred_pairs_reuse_buffers_only_when_both_halves_are_written():
    """The save may ask for the halves of two pairs interleaved: a pair's buffer serves the next
    weight only once both its halves are written, so no half is overwritten before it is."""
    from onnxsparse import format as fmt
    from conftest import sparse_weight

    sink = DeferredPairs()
    weights = {name: sparse_weight(shape, "kn", seed=seed).astype(np.float16)
               for name, shape, seed in (("A", (256, 96), 1), ("B", (128, 160), 2), ("C", (256, 96), 3), ("D", (128, 96), 4))}
    pairs = {name: sink.placeholders(onnx.numpy_helper.from_array(w, name), "kn", (f"{name}.values", f"{name}.index"))
             for name, w in weights.items()}
    assert all(pair is not None for pair in pairs.values())
    written = {}
    order = [("A", 0), ("B", 0), ("A", 1), ("C", 1), ("B", 1), ("D", 0), ("C", 0), ("D", 1)]
    for name, half in order:
        written[name, half] = b"".join(bytes(chunk) for chunk in sink.chunks(pairs[name][half], chunk=1000))
    for name, w in weights.items():
        values, index = fmt.compress_weight(w, "kn")
        assert written[name, 0] == values.tobytes() and written[name, 1] == index.tobytes(), name
    assert 1 <= len(sink._free) <= DeferredPairs.POOL


@pytest.mark.parametrize("refuse", [False, True], ids=["windows", "no-sync_file_range"])
def test_data_file_written_in_windows_is_the_same(source, tmp_path, refuse, monkeypatch):
    """Large data files are written back and dropped from the page cache a window at a time
    (io._StreamingWriter); small windows here, the same bytes; a file system that refuses
    sync_file_range is written on without it."""
    expected_dir, windowed_dir = tmp_path / "plain", tmp_path / "windowed"
    expected_dir.mkdir()
    windowed_dir.mkdir()
    compile_model(source, output=expected_dir / "out.onnx", external_data=True)
    calls = []
    real = io._sync_file_range()

    def recording():
        def sync(fd, offset, nbytes, flags):
            calls.append((offset, nbytes, flags))
            if refuse:
                raise OSError(22, "Invalid argument")
            if real is not None:
                real(fd, offset, nbytes, flags)
        return sync

    monkeypatch.setattr(io, "_sync_file_range", recording)
    monkeypatch.setattr(io._StreamingWriter, "WINDOW", 4096)
    compile_model(source, output=windowed_dir / "out.onnx", external_data=True)
    assert _files(windowed_dir) == _files(expected_dir)
    size = (windowed_dir / "out.onnx.data").stat().st_size
    if refuse:
        assert len(calls) == 1  # refused once, then plain writes
    else:
        assert size > 3 * 4096 and len(calls) > 3
        started = [(offset, nbytes) for offset, nbytes, flags in calls if flags == 2]
        assert started[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(started, started[1:]))
        waited = [(offset, nbytes) for offset, nbytes, flags in calls if flags == 7]
        assert waited == started[:len(waited)] and len(waited) == len(started) - 1
