"""Head detection: the layer(s) whose output reaches a graph output without passing through another
eligible layer, along data edges only (never the shape input of a Reshape/Expand/..., never
through ``Shape``/``Size``), and not merged on the way by a residual ``Add`` whose other operand
carries the output of a layer upstream of it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_model

from models.hf_bert import build_hf_bert, linear_names
from onnxsparse.prune import scan_layers

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def w(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_hf_bert_head_is_the_classifier_only():
    """Residual Adds merge paths: attention/FFN output projections are not heads (issue 13 item 9);
    last_hidden_state has no head at all (its last layer is merged into the residual stream)."""
    model = build_hf_bert(layers=2)
    scan = scan_layers(model)
    assert scan.heads == {"/classifier/Gemm"}
    pruned = {use.node for layer in scan.layers for use in layer.uses}
    assert pruned == set(linear_names(2)) - {"/classifier/Gemm"}


def test_reshape_whose_shape_comes_from_shape_node():
    """The walk never follows Shape or a Reshape's shape input: only conv3 is the head."""
    text = f"""{HEADER} g (float[N, 8, 6, 6] x) => (float[N, 8, 36] y) {{
        c1 = Conv<kernel_shape=[3, 3], pads=[1, 1, 1, 1]>(x, w1) r1 = Relu(c1)
        c2 = Conv<kernel_shape=[3, 3], pads=[1, 1, 1, 1]>(r1, w2) r2 = Relu(c2)
        c3 = Conv<kernel_shape=[1, 1]>(r2, w3)
        s = Shape(r2) s2 = Slice(s, st, en) t = Concat<axis=0>(s2, m1)
        y = Reshape(c3, t) }}"""
    model = make_model(text, w1=w((8, 8, 3, 3)), w2=w((8, 8, 3, 3), 1), w3=w((8, 8, 1, 1), 2),
                       st=np.array([0], np.int64), en=np.array([2], np.int64), m1=np.array([-1], np.int64))
    scan = scan_layers(model)
    assert scan.heads == {"Conv_4"}
    assert [layer.weight for layer in scan.layers] == ["w1", "w2"]


def test_expand_shape_input_is_not_followed():
    text = f"""{HEADER} g (float[N, 8] x) => (float[N, 8] y) {{
        a = MatMul(x, w1) b = MatMul(a, w2) s = Shape(b) e = Expand(a, s) y = Relu(e) }}"""
    scan = scan_layers(make_model(text, w1=w((8, 8)), w2=w((8, 8), 1)))
    assert scan.heads == {"MatMul_0"}


def test_plain_mlp_last_layer_is_head():
    text = f"""{HEADER} g (float[N, 16] x) => (float[N, 8] y) {{
        a = MatMul(x, w1) r = Relu(a) b = Gemm<transB=1>(r, w2, b2) s = Relu(b) y = MatMul(s, w3) }}"""
    scan = scan_layers(make_model(text, w1=w((16, 16)), w2=w((16, 16), 1), b2=w((16,), 2), w3=w((16, 8), 3)))
    assert scan.heads == {"MatMul_4"}
    assert [layer.weight for layer in scan.layers] == ["w1", "w2"]


def test_cnn_with_residual_block_and_classifier():
    """ResNet-like: the last block's conv feeds a residual Add, then pooling and the classifier Gemm."""
    text = f"""{HEADER} g (float[N, 8, 6, 6] x) => (float[N, 10] y) {{
        c1 = Conv<kernel_shape=[3, 3], pads=[1, 1, 1, 1]>(x, w1) r1 = Relu(c1)
        c2 = Conv<kernel_shape=[3, 3], pads=[1, 1, 1, 1]>(r1, w2) a = Add(c2, r1) r2 = Relu(a)
        p = GlobalAveragePool(r2) f = Flatten(p) y = Gemm<transB=1>(f, w3, b3) }}"""
    model = make_model(text, w1=w((8, 8, 3, 3)), w2=w((8, 8, 3, 3), 1), w3=w((10, 8), 2), b3=w((10,), 3))
    scan = scan_layers(model)
    assert scan.heads == {"Gemm_7"}
    assert [layer.weight for layer in scan.layers] == ["w1", "w2"]


def test_residual_at_the_output_without_classifier_has_no_head():
    text = f"""{HEADER} g (float[N, 8] x) => (float[N, 8] y) {{
        a = MatMul(x, w1) r = Relu(a) b = MatMul(r, w2) y = Add(b, a) }}"""
    scan = scan_layers(make_model(text, w1=w((8, 8)), w2=w((8, 8), 1)))
    assert scan.heads == set()


def test_parallel_heads_merged_by_concat_are_both_heads():
    """Two heads on one trunk (e.g. boxes and scores) merged at the end: neither is upstream of the other."""
    text = f"""{HEADER} g (float[N, 8] x) => (float[N, 16] y) {{
        t = MatMul(x, w1) r = Relu(t) a = MatMul(r, w2) b = MatMul(r, w3) y = Concat<axis=1>(a, b) }}"""
    scan = scan_layers(make_model(text, w1=w((8, 8)), w2=w((8, 8), 1), w3=w((8, 8), 2)))
    assert scan.heads == {"MatMul_2", "MatMul_3"}


def test_residual_with_graph_input_keeps_the_head():
    """A skip from the graph input carries no layer output: the projection is still the head."""
    text = f"""{HEADER} g (float[N, 8] x) => (float[N, 8] y) {{ a = MatMul(x, w1) y = Add(a, x) }}"""
    scan = scan_layers(make_model(text, w1=w((8, 8))))
    assert scan.heads == {"MatMul_0"}


@pytest.mark.parametrize("prune_head", [False, True])
def test_prune_head_option_still_applies(prune_head):
    model = build_hf_bert(layers=1)
    names = {use.node for layer in scan_layers(model, prune_head=prune_head).layers for use in layer.uses}
    assert ("/classifier/Gemm" in names) is prune_head
