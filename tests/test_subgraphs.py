"""Layers inside If/Loop/Scan bodies (silero-vad keeps all its Convs in If branches) and in local
functions: ``check`` describes them, ``compile`` rewrites them in their body, and the compiled model
runs like the dense one. Local functions are reported with the reason (inline them first).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
from conftest import HEAD, make_model, model_with_weight_in_subgraph, random_input, sparse_weight

import onnxsparse
from onnxsparse.api import check_model, compile_model
from onnxsparse.compiler import ModelGraph, find_layers

W = sparse_weight((8, 4), "kn", seed=2)
CONV = sparse_weight((4, 8, 3, 3), "oihw", seed=3)


def if_only_in_branches() -> onnx.ModelProto:
    """Both branches hold a layer; the weights are main-graph initializers (outer scope); the
    else-branch Conv is 1-D-free 2-D with a bias, as in silero-vad."""
    return make_model(
        f"""{HEAD} g (float[2,8] x, float[1,8,6,6] img, bool c) => (float[2,4] y, float[1,4,4,4] z) {{
        y, z = If(c) <
            then_branch = t () => (float[2,4] yt, float[1,4,4,4] zt) {{ yt = MatMul(x, W) zt = Conv(img, K, B) }},
            else_branch = e () => (float[2,4] ye, float[1,4,4,4] ze) {{ m = MatMul(x, W) ye = Relu(m) ze = Conv(img, K) }}>
        }}""",
        W=W, K=CONV, B=random_input((4,), seed=5),
    )


def weight_inside_the_branch() -> onnx.ModelProto:
    """The weight is the branch's own initializer."""
    model = make_model(
        f"""{HEAD} g (float[2,8] x, bool c) => (float[2,4] y) {{
        y = If(c) < then_branch = t () => (float[2,4] yt) {{ yt = MatMul(x, V) }},
                     else_branch = e () => (float[2,4] ye) {{ ye = MatMul(x, V2) }}> }}"""
    )
    branches = model.graph.node[0].attribute
    for attribute, name in zip(sorted(branches, key=lambda a: a.name, reverse=True), ("V", "V2")):
        attribute.g.initializer.append(onnx.numpy_helper.from_array(W * (2 if name == "V2" else 1), name))
    return model


def loop_model() -> onnx.ModelProto:
    """h <- Relu(h @ W) three times; W from the outer scope, h carried by the Loop."""
    return make_model(
        f"""{HEAD} g (float[2,8] x) => (float[2,8] y) {{
        n = Constant<value = int64 {{3}}>()
        t = Constant<value = bool {{1}}>()
        y = Loop(n, t, x) < body = b (int64 i, bool cond, float[2,8] h) => (bool cond_out, float[2,8] h_out) {{
            cond_out = Identity(cond)
            p = MatMul(h, S)
            h_out = Relu(p) }}> }}""",
        S=sparse_weight((8, 8), "kn", seed=6),
    )


def scan_model() -> onnx.ModelProto:
    """A Scan over the sequence axis, each step a Gemm with the outer-scope weight."""
    return make_model(
        f"""{HEAD} g (float[5,2,8] xs) => (float[5,2,4] ys) {{
        ys = Scan(xs) <num_scan_inputs = 1, body = b (float[2,8] xt) => (float[2,4] yt) {{
            yt = Gemm<transB = 1>(xt, G) }}> }}""",
        G=sparse_weight((4, 8), "nk", seed=7),
    )


def nested_model() -> onnx.ModelProto:
    """An If inside a Loop body."""
    return make_model(
        f"""{HEAD} g (float[2,8] x, bool c) => (float[2,8] y) {{
        n = Constant<value = int64 {{2}}>()
        y = Loop(n, c, x) < body = b (int64 i, bool cond, float[2,8] h) => (bool cond_out, float[2,8] h_out) {{
            cond_out = Identity(cond)
            h_out = If(cond) < then_branch = t () => (float[2,8] a) {{ a = MatMul(h, S) }},
                               else_branch = e () => (float[2,8] b) {{ b = Identity(h) }}> }}> }}""",
        S=sparse_weight((8, 8), "kn", seed=8),
    )


def dense_run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def sparse_run(model, feeds):
    return onnxsparse.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)


CASES = {
    "if_branches": (if_only_in_branches, lambda: {"x": random_input((2, 8)), "img": random_input((1, 8, 6, 6)), "c": np.array(False)}, 4),
    "branch_initializer": (weight_inside_the_branch, lambda: {"x": random_input((2, 8)), "c": np.array(True)}, 2),
    "loop": (loop_model, lambda: {"x": random_input((2, 8))}, 1),
    "scan": (scan_model, lambda: {"xs": random_input((5, 2, 8))}, 1),
    "nested": (nested_model, lambda: {"x": random_input((2, 8)), "c": np.array(True)}, 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_check_describes_layers_in_bodies(case):
    build, _, count = CASES[case]
    layers = check_model(build()).layers
    assert len(layers) == count
    assert all(layer.visited and layer.eligible and layer.scope for layer in layers), [l.reason for l in layers]


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_compile_rewrites_layers_in_bodies(case, fold):
    build, _, count = CASES[case]
    result = compile_model(build(), fold=fold)
    assert len(result.rewritten) == count
    onnx.checker.check_model(result.model)
    ops = [node.op_type for _, body in _bodies(result.model) for node in body.node]
    assert "MatMul" not in ops and "Gemm" not in ops and "Conv" not in ops
    assert ("CompressOp" in ops or "CompressOp" in [n.op_type for n in result.model.graph.node]) == (not fold)


@pytest.mark.kernels
@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_compiled_bodies_run_like_the_dense_model(case, fold):
    build, feeds, _ = CASES[case]
    model = build()
    compiled = compile_model(model, fold=fold).model
    inputs = feeds()
    for got, want in zip(sparse_run(compiled, inputs), dense_run(model, inputs)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.kernels
def test_if_takes_either_branch():
    model = if_only_in_branches()
    compiled = compile_model(model).model
    for c in (True, False):
        inputs = {"x": random_input((2, 8)), "img": random_input((1, 8, 6, 6)), "c": np.array(c)}
        for got, want in zip(sparse_run(compiled, inputs), dense_run(model, inputs)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _bodies(model):
    from onnxsparse.compiler.graph import walk_subgraphs

    return list(walk_subgraphs(model.graph.node))


def test_outer_weight_used_by_both_branches_is_compressed_once_in_the_main_graph():
    result = compile_model(if_only_in_branches())
    by_source = {c.source: c for c in result.compressed}
    assert sorted(by_source) == ["K", "W"] and len(result.compressed) == 2
    assert len(by_source["W"].users) == 2 and len(by_source["K"].users) == 2
    main = {tensor.name for tensor in result.model.graph.initializer}
    assert {by_source["W"].values, by_source["W"].index} <= main
    assert "W" not in main and "K" not in main  # no user reads the dense weights any more
    for _, body in _bodies(result.model):
        assert [tensor.name for tensor in body.initializer] == []


def test_compressed_initializers_of_a_body_weight_stay_in_that_body():
    result = compile_model(weight_inside_the_branch())
    bodies = dict(_bodies(result.model))
    for where, body in bodies.items():
        names = {tensor.name for tensor in body.initializer}
        assert len(names) == 2 and all(name.endswith(("_values", "_index")) for name in names), (where, names)
    assert [tensor.name for tensor in result.model.graph.initializer] == []


def test_layers_record_their_scope():
    layers = check_model(nested_model()).layers
    assert [layer.scope for layer in layers] == ["the body of Loop '' > the then_branch of If ''"]
    assert layers[0].to_dict()["scope"] == layers[0].scope


def test_a_body_input_is_not_a_constant_weight():
    model = make_model(
        f"""{HEAD} g (float[2,8] x, float[8,8] w0) => (float[2,8] y, float[8,8] wl) {{
        n = Constant<value = int64 {{2}}>()
        t = Constant<value = bool {{1}}>()
        wl, y = Loop(n, t, w0, x) < body = b (int64 i, bool cond, float[8,8] w, float[2,8] h)
            => (bool co, float[8,8] wo, float[2,8] ho) {{ co = Identity(cond) wo = Identity(w) ho = MatMul(h, w) }}> }}"""
    )
    (layer,) = check_model(model).layers
    assert layer.visited and not layer.eligible
    assert layer.reason == "weight 'w' is a graph input, so it is not constant"


def test_layers_in_local_functions_are_reported_with_what_to_do():
    model = onnx.parser.parse_model(
        f"""<ir_version: 10, opset_import: ["" : 17, "local" : 1]>
        g (float[2,8] x) => (float[2,4] y) {{ y = local.Proj(x) }}
        <domain: "local", opset_import: ["" : 17]>
        Proj (a) => (b) {{ w = Constant<value = float[8,4] {{{', '.join(str(v) for v in W.ravel())}}}>() b = MatMul(a, w) }}"""
    )
    (layer,) = check_model(model).layers
    assert not layer.visited and not layer.eligible
    assert layer.reason == ("inside function 'Proj'; local functions are not rewritten: inline them first "
                            "(onnx.inliner.inline_local_functions)")
    result = compile_model(model)
    assert result.rewritten == [] and result.left[0].reason == layer.reason
    inlined = onnx.inliner.inline_local_functions(model)
    assert len(compile_model(inlined).rewritten) == 1


def test_find_layers_default_keeps_bodies_undescribed():
    """The default (the pruner's until it opts in) is unchanged: body layers are not visited."""
    layers = find_layers(ModelGraph(model_with_weight_in_subgraph()))
    assert [(layer.visited, layer.scope) for layer in layers] == [(True, ""), (False, "the then_branch of If ''")]
    assert layers[1].reason.endswith("subgraphs and functions are not visited")
    described = find_layers(ModelGraph(model_with_weight_in_subgraph()), subgraphs=True)
    assert [(layer.visited, layer.scope, layer.layout, layer.index) for layer in described] == [
        (True, "", "kn", 0), (True, "the then_branch of If ''", "kn", 0)]
    graph = ModelGraph(model_with_weight_in_subgraph())
    assert graph.scope(described[1].scope).nodes()[described[1].index].op == "MatMul"


def test_check_cli_names_the_body_of_a_layer(tmp_path, capsys):
    from onnxsparse.cli import main

    path = tmp_path / "nested.onnx"
    onnx.save(nested_model(), path)
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "<MatMul -> a> (in the body of Loop '' > the then_branch of If '')" in out
    assert "1 of 1 layers eligible" in out


def test_layer_node_finds_the_node_in_its_body():
    from onnxsparse.compiler.layers import layer_node

    graph = ModelGraph(nested_model())
    (record,) = find_layers(graph, subgraphs=True)
    node = layer_node(graph, record)
    assert node.op == "MatMul" and node.outputs[0].name == "a"
    with pytest.raises(ValueError, match="not visited"):
        layer_node(graph, find_layers(graph)[0])
