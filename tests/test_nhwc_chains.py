"""``compile --conv-layout nhwc`` (compiler.nhwc_chains): chains of sparse convs run in NHWC with
Transposes only at their ends. Checked on the CPU EP (whose kernels take the layout by transposing)
against the NCHW compile of the same model and against ONNX Runtime's run of the dense original."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import REPO
from onnx import TensorProto, helper, numpy_helper

import onnxsparse
from onnxsparse import format as fmt
from onnxsparse.api import compile_model
from onnxsparse.compiler import ModelGraph, NhwcChains

sys.path.insert(0, str(REPO))
from models.resnet18 import build_resnet18  # noqa: E402


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    sess = onnxsparse.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def test_resnet18_is_one_chain():
    model = build_resnet18(seed=1, classes=10)
    feeds = {"image": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    nchw = compile_model(model).model
    nhwc = compile_model(model, conv_layout="nhwc").model
    convs = [n for n in nhwc.graph.node if n.op_type == "Conv2dCompress"]
    assert len(convs) == 19 and all(
        helper.get_attribute_value(next(a for a in n.attribute if a.name == "layout")) == b"NHWC" for n in convs)
    # one Transpose in (after the max pool), one out (before the global average pool)
    assert ops(nhwc).count("Transpose") == 2, ops(nhwc)
    want, got = run(nchw, feeds)[0], run(nhwc, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    dense = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(got, dense, rtol=1e-3, atol=1e-3 * np.abs(dense).max())


def _conv(rng, name: str, c: int, oc: int, k: int, inits: list, stride: int = 1) -> tuple[str, str]:
    w = fmt.prune_weight_magnitude(rng.standard_normal((oc, c, k, k)).astype(np.float32), "oihw")
    inits += [numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(rng.standard_normal(oc).astype(np.float32), f"{name}.b")]
    return f"{name}.w", f"{name}.b"


def edge_model():
    """x -> conv -> Relu -> (a) conv -> Mul by a [1,C,1,1] constant -> Add(shape-read tensor) -> graph output
    with a Shape reading the Relu's output and a second graph output inside the chain."""
    rng = np.random.default_rng(4)
    inits: list = []
    w1, b1 = _conv(rng, "c1", 8, 16, 3, inits)
    w2, b2 = _conv(rng, "c2", 16, 16, 1, inits)
    scale = numpy_helper.from_array(rng.standard_normal((1, 16, 1, 1)).astype(np.float32), "scale")
    inits.append(scale)
    nodes = [
        helper.make_node("Conv", ["x", w1, b1], ["h1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Conv", ["r1", w2, b2], ["h2"], kernel_shape=[1, 1]),
        helper.make_node("Mul", ["h2", "scale"], ["m"]),
        helper.make_node("Add", ["m", "r1"], ["y"]),
        helper.make_node("Shape", ["r1"], ["shape"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 6, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16, 6, 5]),
                               helper.make_tensor_value_info("r1", TensorProto.FLOAT, [2, 16, 6, 5]),
                               helper.make_tensor_value_info("shape", TensorProto.INT64, [4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, {"x": rng.standard_normal((2, 8, 6, 5)).astype(np.float32)}


def test_chain_edges_keep_the_nchw_names_and_values():
    model, feeds = edge_model()
    nhwc = compile_model(model, conv_layout="nhwc").model
    names = [o.name for o in nhwc.graph.output]
    assert names == ["y", "r1", "shape"]
    got, want = run(nhwc, feeds), run(compile_model(model).model, feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    assert list(got[2]) == [2, 16, 6, 5]  # the Shape reads the NCHW tensor
    # the per-channel constant was permuted, no Mul/Add left outside the chain
    permuted = [i for i in nhwc.graph.initializer if i.name.startswith("scale")]
    assert [list(i.dims) for i in permuted] == [[1, 1, 1, 16]]
    # in: x; out: y and r1 (a graph output and the Shape's input)
    assert ops(nhwc).count("Transpose") == 3, ops(nhwc)


def test_pass_leaves_grouped_convs_and_models_without_convs():
    model, _ = edge_model()
    compiled = compile_model(model).model
    for node in compiled.graph.node:
        if node.op_type == "Conv2dCompress" and node.input[0] == "x":
            node.attribute.append(helper.make_attribute("group", 2))
    result = NhwcChains()(ModelGraph(compiled))
    assert "c1" not in " ".join(result.convs)  # grouped: left NCHW
    bare = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    assert not NhwcChains()(ModelGraph(bare)).modified


def test_cli_option(tmp_path):
    model, _ = edge_model()
    source = tmp_path / "m.onnx"
    onnx.save(model, source)
    done = subprocess.run([sys.executable, "-m", "onnxsparse", "compile", str(source), "--conv-layout", "nhwc", "-o",
                           str(tmp_path / "out.onnx")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ops(onnx.load(str(tmp_path / "out.onnx"))).count("Transpose") == 3
    bad = subprocess.run([sys.executable, "-m", "onnxsparse", "compile", str(source), "--conv-layout", "nwhc"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "invalid choice" in bad.stderr


if __name__ == "__main__":
    pytest.main([__file__])


def test_squeeze_excitation_gate_is_transposed_in():
    """x -> conv -> Relu -> Mul(., Sigmoid(GlobalAveragePool(.))): the gate [N, C, 1, 1] is computed
    outside the chain (the pool is NCHW) and joins the Mul through a Transpose; values unchanged."""
    rng = np.random.default_rng(6)
    inits: list = []
    w1, b1 = _conv(rng, "c1", 8, 16, 3, inits)
    w2, b2 = _conv(rng, "c2", 16, 8, 1, inits)
    nodes = [
        helper.make_node("Conv", ["x", w1, b1], ["h"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Sigmoid", ["p"], ["g"]),
        helper.make_node("Mul", ["r", "g"], ["s"]),
        helper.make_node("Conv", ["s", w2, b2], ["y"], kernel_shape=[1, 1]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 7, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 7, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    feeds = {"x": rng.standard_normal((2, 8, 7, 6)).astype(np.float32)}
    nhwc = compile_model(model, conv_layout="nhwc").model
    mul = next(n for n in nhwc.graph.node if n.op_type == "Mul")
    producers = {o: n for n in nhwc.graph.node for o in n.output}
    assert all(producers[i].op_type in ("Transpose", "Conv2dCompress") for i in mul.input), \
        [producers[i].op_type for i in mul.input]
    # in: x and the gate; out: r for the pool, y
    assert ops(nhwc).count("Transpose") == 4, ops(nhwc)
    np.testing.assert_allclose(run(nhwc, feeds)[0], run(compile_model(model).model, feeds)[0], rtol=1e-5, atol=1e-5)
