"""``onnxsparse diff A B``: exit 0 equal, 1 different (naming the difference), 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import onnx.parser
import pytest

from onnxsparse.diff import diff_models
from onnxsparse.io import save_model

REPO = Path(__file__).resolve().parent.parent

BASE = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 2] y)
<float[4, 2] w = {1.0, 0.0, 0.0, 2.0, 3.0, 0.0, 0.0, 4.0}, float[2] b = {0.5, -0.5}>
{
  [mm_node] mm = MatMul (x, w)
  [add_node] z = Add (mm, b)
  [act_node] y = LeakyRelu <alpha = 0.1> (z)
}
"""


def parse(text: str = BASE) -> onnx.ModelProto:
    return onnx.parser.parse_model(text)


def write(tmp_path: Path, name: str, model: onnx.ModelProto, external: bool = False) -> Path:
    path = tmp_path / name
    save_model(model, path, external_data=external)
    return path


def run_diff(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "onnxsparse", "diff", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_equal_models_exit_0(tmp_path):
    a = write(tmp_path, "a.onnx", parse())
    b = write(tmp_path, "b.onnx", parse())
    result = run_diff(a, b)
    assert result.returncode == 0, result.stderr
    assert "equal" in result.stdout
    assert result.stderr == ""


def test_same_content_inline_and_external_is_equal(tmp_path):
    from models import build_mlp

    a = write(tmp_path, "a.onnx", build_mlp())
    b = write(tmp_path, "b.onnx", build_mlp(), external=True)
    assert (tmp_path / "b.onnx.data").is_file()
    assert run_diff(a, b).returncode == 0


def test_changed_attribute_is_named(tmp_path):
    a = write(tmp_path, "a.onnx", parse())
    b = write(tmp_path, "b.onnx", parse(BASE.replace("alpha = 0.1", "alpha = 0.2")))
    result = run_diff(a, b)
    assert result.returncode == 1, result.stderr
    assert "act_node" in result.stdout
    assert "attribute alpha" in result.stdout
    assert "1 difference" in result.stdout


def test_changed_initializer_content_is_named(tmp_path):
    a = write(tmp_path, "a.onnx", parse())
    b = write(tmp_path, "b.onnx", parse(BASE.replace("{0.5, -0.5}", "{0.5, -0.25}")))
    result = run_diff(a, b)
    assert result.returncode == 1
    assert "initializer 'b'" in result.stdout
    assert "sha256" in result.stdout
    assert "initializer 'w'" not in result.stdout


def test_added_node_is_named(tmp_path):
    text = BASE.replace("[act_node] y = LeakyRelu <alpha = 0.1> (z)",
                        "[act_node] r = LeakyRelu <alpha = 0.1> (z)\n  [extra_node] y = Identity (r)")
    a = write(tmp_path, "a.onnx", parse())
    b = write(tmp_path, "b.onnx", parse(text))
    result = run_diff(a, b)
    assert result.returncode == 1
    assert "+ node 'extra_node' (Identity" in result.stdout
    assert "act_node" in result.stdout  # its output changed from y to r


def test_unnamed_nodes_are_aligned_by_position():
    """An inserted node among unnamed ones is one addition, not every later node changed."""
    a = parse(BASE.replace("[mm_node] ", "").replace("[add_node] ", "").replace("[act_node] ", ""))
    b = onnx.ModelProto()
    b.CopyFrom(a)
    b.graph.node.insert(0, onnx.helper.make_node("Identity", ["x"], ["x_copy"]))
    result = diff_models(a, b)
    assert result.node_matching == "position"
    assert [(d.section, d.change, d.position) for d in result.differences] == [("node", "added", "#0")]


def test_json_structure(tmp_path):
    a = write(tmp_path, "a.onnx", parse())
    b_model = parse(BASE.replace("alpha = 0.1", "alpha = 0.2").replace("{0.5, -0.5}", "{1.0, -0.5}"))
    b_model.opset_import[0].version = 18
    b = write(tmp_path, "b.onnx", b_model)
    result = run_diff(a, b, "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["equal"] is False
    assert report["a"] == str(a) and report["b"] == str(b)
    assert report["node_matching"] == "name"
    assert report["summary"] == {
        "opset_import": {"added": 0, "removed": 0, "changed": 1},
        "node": {"added": 0, "removed": 0, "changed": 1},
        "initializer": {"added": 0, "removed": 0, "changed": 1},
    }
    by_section = {d["section"]: d for d in report["differences"]}
    node = by_section["node"]
    assert node["name"] == "act_node" and node["change"] == "changed"
    assert node["fields"] == [{"field": "attribute alpha", "a": pytest.approx(0.1), "b": pytest.approx(0.2)}]
    assert by_section["opset_import"]["fields"] == [{"field": "version", "a": 17, "b": 18}]
    assert [f["field"] for f in by_section["initializer"]["fields"]] == ["sha256"]

    same = run_diff(a, a, "--json")
    assert same.returncode == 0
    assert json.loads(same.stdout)["equal"] is True
    assert json.loads(same.stdout)["differences"] == []


def test_inputs_outputs_ir_and_initializers():
    a = parse()
    b = parse(BASE.replace("float[N, 4] x", "float16[N, 4] x").replace("float[N, 2] y", "float[batch, 2] y"))
    b.ir_version = 9
    b.graph.initializer.append(onnx.helper.make_tensor("unused", onnx.TensorProto.FLOAT, [1], [0.0]))
    a.graph.initializer.append(onnx.helper.make_tensor("gone", onnx.TensorProto.FLOAT, [1], [0.0]))
    result = diff_models(a, b)
    found = {(d.section, d.change, d.name): d for d in result.differences}
    assert set(found) == {
        ("ir_version", "changed", ""),
        ("input", "changed", "x"),
        ("output", "changed", "y"),
        ("initializer", "added", "unused"),
        ("initializer", "removed", "gone"),
    }
    assert found[("output", "changed", "y")].fields[0].to_dict() == {
        "field": "type", "a": "float32[N, 2]", "b": "float32[batch, 2]"
    }


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    good = write(tmp_path, "good.onnx", parse())
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("this is not an ONNX model\n" * 20)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    return {
        "missing": tmp_path / "missing.onnx",
        "not_onnx": not_onnx,
        "truncated": truncated,
        "empty": empty,
        "directory": folder,
    }


@pytest.mark.parametrize("case", ["missing", "not_onnx", "truncated", "empty", "directory"])
@pytest.mark.parametrize("side", ["a", "b"])
def test_bad_input_exits_2_with_one_line(tmp_path, case, side):
    good = write(tmp_path, "good.onnx", parse())
    bad = _bad_inputs(tmp_path)[case]
    args = (bad, good) if side == "a" else (good, bad)
    result = run_diff(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("onnxsparse diff: error:")
    assert str(bad) in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_non_utf8_names_are_one_line(tmp_path, json_flag):
    model = parse()
    model.graph.node[0].name = "NODEAAAA"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(model.SerializeToString().replace(b"NODEAAAA", b"N\xff\xfeDAAAA"))
    good = write(tmp_path, "good.onnx", parse())
    result = run_diff(bad, good, *json_flag)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not valid UTF-8" in lines[0] and "internal error" not in lines[0], result.stderr
