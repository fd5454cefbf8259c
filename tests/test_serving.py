"""Serving (docs/serving.md): the Triton model repository that ``onnxsparse triton`` writes, and the
strict ``config.pbtxt`` reader that checks it. Triton itself cannot run here; the repository is
checked as Triton's ONNX Runtime backend would use it: the config parses, the paths resolve, the
library path is absolute, and ONNX Runtime loads the model with the library registered on plain
session options (as the backend does) and matches the dense model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import REPO, random_input
from test_cli_check_compile import assert_one_line_error, cli

from models.build import BUNDLED_SAMPLE
from onnxsparse import OnnxSparseError
from onnxsparse.api import compile_model
from onnxsparse.io import save_model
from onnxsparse.serving import InstanceGroup, write_triton_repository
from onnxsparse.triton_config import parse_model_config


@pytest.fixture
def compiled(tmp_path) -> Path:
    """The bundled sample compiled, saved with its weights in an external data file."""
    out = tmp_path / "model" / "tiny.sparse.onnx"
    out.parent.mkdir()
    save_model(compile_model(str(BUNDLED_SAMPLE)).model, out, external_data=True)
    assert [p.name for p in out.parent.iterdir() if p != out], "expected an external data file"
    return out


def _config(repo: Path):
    return parse_model_config((repo / "config.pbtxt").read_text())


# --- the repository --------------------------------------------------------------------------------

@pytest.mark.kernels
def test_repository_loads_in_onnxruntime_as_the_backend_would(compiled, tmp_path):
    result = write_triton_repository(compiled, tmp_path / "repo", instances=[InstanceGroup("cpu", 2)], threads=1)
    model_dir = tmp_path / "repo" / "tiny"
    assert result.model_dir == model_dir and result.sparse_ops > 0
    config = _config(model_dir)
    assert config.name == "tiny" and config.backend == "onnxruntime" and config.max_batch_size == 0
    # Triton loads REPOSITORY/NAME/<version>/<default_model_filename>; the data file sits beside it.
    model_file = model_dir / "1" / config.default_model_filename
    assert model_file.read_bytes() == compiled.read_bytes()
    for data in compiled.parent.iterdir():
        assert (model_dir / "1" / data.name).read_bytes() == data.read_bytes()
    (library,) = config.model_operations.op_library_filename
    assert Path(library).is_absolute() and Path(library) == (model_dir / "libonnxsparse_ops.so").resolve()
    assert Path(library).is_file()
    assert [(g.kind, g.count) for g in config.instance_group] == [(2, 2)]  # KIND_CPU is 2
    assert config.parameters["intra_op_thread_count"].string_value == "1"

    options = ort.SessionOptions()  # plain ORT, no onnxsparse helper: what the backend does
    options.register_custom_ops_library(library)
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    dense = ort.InferenceSession(str(BUNDLED_SAMPLE), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [i.name for i in config.input]
    assert [o.name for o in session.get_outputs()] == [o.name for o in config.output]
    for tensor, declared in zip(session.get_inputs(), config.input):
        assert len(declared.dims) == len(tensor.shape)
        assert [d if isinstance(d, int) else -1 for d in tensor.shape] == list(declared.dims)
    x = random_input((2, 5, 32))
    (got,) = session.run(None, {"tokens": x})
    (want,) = dense.run(None, {"tokens": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_mount_names_the_servers_path_and_the_tuning_cache(compiled, tmp_path):
    cache = tmp_path / "tuning.txt"
    cache.write_text("# onnxsparse cuSPARSELt tuning cache v1\n")
    result = write_triton_repository(compiled, tmp_path / "repo", "bert", mount="/models",
                                     instances=[InstanceGroup("gpu", 2, [0, 1])], tuning_cache=cache,
                                     library=REPO / "pyproject.toml")  # any file: only copied here
    config = _config(tmp_path / "repo" / "bert")
    assert list(config.model_operations.op_library_filename) == ["/models/bert/libonnxsparse_ops.so"]
    assert result.environment == {"ONNXSPARSE_CUSPARSELT_CACHE": "/models/bert/cusparselt_tuning.txt"}
    assert (tmp_path / "repo" / "bert" / "cusparselt_tuning.txt").read_text() == cache.read_text()
    (group,) = config.instance_group
    assert (group.kind, group.count, list(group.gpus)) == (1, 2, [0, 1])  # KIND_GPU is 1


def test_gpu_instances_with_a_cpu_only_library_warn(compiled, tmp_path, caplog):
    cpu_only = tmp_path / "libcpu.so"
    cpu_only.write_bytes(b"\x7fELF no CUDA kernels here")
    write_triton_repository(compiled, tmp_path / "repo", instances=[InstanceGroup("gpu", 1)], library=cpu_only)
    assert "has no CUDA kernels" in caplog.text


def test_batching_drops_the_first_dimension(compiled, tmp_path):
    write_triton_repository(compiled, tmp_path / "repo", max_batch_size=8, library=REPO / "pyproject.toml")
    config = _config(tmp_path / "repo" / "tiny")
    assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [-1, 32]


@pytest.mark.parametrize("kwargs, message", [
    ({"mount": "models"}, "must be an absolute path"),
    ({"instances": [InstanceGroup("cpu", 0)]}, "must be at least 1"),
    ({"instances": [InstanceGroup("tpu", 1)]}, "use cpu or gpu"),
    ({"instances": [InstanceGroup("cpu", 1, [0])]}, "take no GPU list"),
    ({"name": "../x"}, "plain folder name"),
    ({"threads": 0}, "must be 1 or more"),
    ({"tuning_cache": "/nonexistent/cache.txt"}, "no such tuning cache"),
    ({"library": "/nonexistent/lib.so"}, "no such custom-op library"),
])
def test_bad_arguments_are_refused_and_leave_nothing(compiled, tmp_path, kwargs, message):
    kwargs.setdefault("library", REPO / "pyproject.toml")
    with pytest.raises(OnnxSparseError, match=re.escape(message)):
        write_triton_repository(compiled, tmp_path / "repo", **kwargs)
    assert not (tmp_path / "repo").exists() or list((tmp_path / "repo").iterdir()) == []


def test_cli_writes_and_refuses_an_existing_model_folder(compiled, tmp_path):
    args = ("triton", compiled, "-o", tmp_path / "repo", "--gpu-instances", "1", "--gpus", "0,1", "--json")
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert Path(report["op_library_filename"]).is_file()
    assert [(g.kind, list(g.gpus)) for g in _config(Path(report["model_dir"])).instance_group] == [(1, [0, 1])]
    assert_one_line_error(cli(*args), "exists")


@pytest.mark.parametrize("args, fragment", [
    (["missing.onnx", "-o", "r"], "no such file"),
    (["COMPILED", "-o", "r", "--gpu-instances", "1", "--gpus", "x"], "--gpus 'x'"),
    (["COMPILED", "-o", "r", "--gpus", "0"], "--gpus needs --gpu-instances"),
    (["COMPILED", "-o", "r", "--mount", "models"], "must be an absolute path"),
])
def test_cli_refuses_bad_input_in_one_line(compiled, tmp_path, capsys, args, fragment):
    from onnxsparse import cli as onnxsparse_cli

    args = [str(compiled) if a == "COMPILED" else str(tmp_path / a) if a in ("missing.onnx", "r") else a for a in args]
    assert onnxsparse_cli.main(["triton", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and not (tmp_path / "r").exists(), err


# --- the strict config.pbtxt reader ------------------------------------------------------------------

GOOD = """name: "m" backend: "onnxruntime" max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP16 dims: [ -1, 8 ] } ]
output [ { name: "y" data_type: TYPE_FP16 dims: [ -1, 4 ] } ]
instance_group [ { kind: KIND_GPU count: 2 gpus: [ 0 ] }, { kind: KIND_CPU count: 1 } ]
dynamic_batching { max_queue_delay_microseconds: 100 }
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
model_operations { op_library_filename: "/models/m/libonnxsparse_ops.so" }
"""


def test_reader_accepts_triton_syntax():
    config = parse_model_config(GOOD)
    assert config.input[0].data_type == 10 and list(config.input[0].dims) == [-1, 8]  # TYPE_FP16
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert config.parameters["intra_op_thread_count"].string_value == "2"


@pytest.mark.parametrize("bad, fragment", [
    (GOOD.replace("backend", "backnd"), 'no field named "backnd"'),
    (GOOD + 'name: "again"\n', 'multiple "name" fields'),
    (GOOD.replace("max_batch_size: 4", 'max_batch_size: "4"'), "Couldn't parse integer"),
    (GOOD.replace("max_batch_size: 4", "max_batch_size: 4.5"), "Couldn't parse integer"),
    (GOOD.replace("KIND_CPU", "KIND_TPU"), "no value named KIND_TPU"),
    (GOOD.replace("TYPE_FP16", "FP16", 1), "no value named FP16"),
    (GOOD.rstrip()[:-1], 'Expected "}"'),  # the last brace missing
    (GOOD.replace('"/models/m/libonnxsparse_ops.so"', '"/models/m/lib'), "String missing ending quote"),
    (GOOD.replace("count: 2", "count: 99999999999"), "out of range"),
    (GOOD + "optimization { graph { level: 1 } }\n", 'no field named "optimization"'),  # outside the subset
], ids=["unknown-field", "name-twice", "string-for-int", "float-for-int", "unknown-kind", "unknown-type",
        "unbalanced", "unterminated-string", "int32-overflow", "outside-subset"])
def test_reader_refuses_malformed_text(bad, fragment):
    with pytest.raises(OnnxSparseError, match=re.escape(fragment)):
        parse_model_config(bad)


def test_every_config_in_the_guide_parses():
    blocks = re.findall(r"```protobuf\n(.*?)```", (REPO / "docs" / "serving.md").read_text(), re.S)
    assert blocks, "docs/serving.md shows config.pbtxt in ```protobuf blocks"
    for block in blocks:
        parse_model_config(block)
