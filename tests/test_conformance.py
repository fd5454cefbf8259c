"""ONNX's own backend node tests for Conv, Gemm and MatMul, reused as a conformance suite.

Each case from ``onnx.backend.test.case.node.collect_testcases()`` is turned into a model whose
weight (input 1) is an initializer pruned to 2:4 along SPEC's axis, in two forms:

- ``as-is``: the case's own shapes and data. Many of its weights have K not a multiple of 4 or
  rank != 2: the compiler must leave those dense (with a reason) and the model must still match.
- ``widened``: the same attributes (strides, pads, auto_pad, dilations, group, alpha, beta,
  transA, transB, bias shapes) with K rounded up to a multiple of 4 and fresh random data, so
  that the sparse kernels run on every attribute combination the suite exercises.

The compiled model runs in ONNX Runtime with the onnxsparse library and is compared with the
pruned dense model run in ONNX Runtime's own kernels.
"""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from onnxsparse import InferenceSession
from onnxsparse import format as fmt
from onnxsparse.api import compile_model

pytestmark = pytest.mark.kernels  # every case runs the compiled model with the library

OPS = ("Conv", "Gemm", "MatMul")


def _collect():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases

        cases = collect_testcases(None)
    return [c for c in cases if len(c.model.graph.node) == 1 and c.model.graph.node[0].op_type in OPS]


CASES = {case.name: case for case in _collect()}


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _layout(node, weight_shape):
    if node.op_type == "Conv":
        return "oihw"
    if node.op_type == "Gemm":
        return "nk" if _attrs(node).get("transB", 0) else "kn"
    return "kn"


def _eligible_shape(node, weight_shape):
    if node.op_type == "Conv":
        return len(weight_shape) == 4 and weight_shape[1] * weight_shape[2] * weight_shape[3] % 4 == 0 and weight_shape[1] % 4 == 0
    if len(weight_shape) != 2:
        return False
    return fmt.reduction_length(weight_shape, _layout(node, weight_shape)) % 4 == 0


def _round4(k):
    return max(4, -(-k // 4) * 4)


def _widen(node, inputs, rng):
    """Fresh inputs with the reduction dimension rounded up to a multiple of 4."""
    inputs = [np.array(x) for x in inputs]
    attrs = _attrs(node)
    if node.op_type == "Conv":
        x, w = inputs[0], inputs[1]
        group = attrs.get("group", 1)
        cg = _round4(w.shape[1])
        inputs[0] = rng.standard_normal((x.shape[0], cg * group, *x.shape[2:])).astype(np.float32)
        inputs[1] = rng.standard_normal((w.shape[0], cg, *w.shape[2:])).astype(np.float32)
    elif node.op_type == "Gemm":
        a, b = inputs[0], inputs[1]
        trans_a, trans_b = attrs.get("transA", 0), attrs.get("transB", 0)
        k = _round4(a.shape[0] if trans_a else a.shape[1])
        m = a.shape[1] if trans_a else a.shape[0]
        n = b.shape[0] if trans_b else b.shape[1]
        inputs[0] = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
        inputs[1] = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    else:
        a, b = inputs[0], inputs[1]
        k = _round4(b.shape[0])
        inputs[0] = rng.standard_normal((*a.shape[:-1], k)).astype(np.float32)
        inputs[1] = rng.standard_normal((k, b.shape[1])).astype(np.float32)
    return inputs


def _model_with_weight_initializer(case, inputs):
    """The case's single-node model with input 1 as a 2:4-pruned initializer."""
    node = case.model.graph.node[0]
    weight = inputs[1]
    if _eligible_shape(node, weight.shape):
        weight = fmt.prune_weight_magnitude(weight, _layout(node, weight.shape))
    names = list(node.input)
    graph_inputs = [
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
        for i, (name, value) in enumerate(zip(names, inputs))
        if i != 1 and name
    ]
    out = case.model.graph.output[0]
    graph = helper.make_graph(
        [node],
        case.name,
        graph_inputs,
        [helper.make_tensor_value_info(out.name, out.type.tensor_type.elem_type, None)],
        initializer=[numpy_helper.from_array(weight, names[1])],
    )
    opset = case.model.opset_import[0].version
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", min(opset, 21))])
    model.ir_version = 10
    feeds = {name: value for i, (name, value) in enumerate(zip(names, inputs)) if i != 1 and name}
    return model, feeds


def _run_dense(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _run_compiled(model, feeds):
    session = InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _count_sparse(model):
    return sum(1 for n in model.graph.node if n.domain == "onnxsparse" and n.op_type != "CompressOp")


def _widenable(case) -> bool:
    """MatMul cases whose weight has rank != 2 stay dense whatever K is: only their as-is form applies."""
    node, weight = case.model.graph.node[0], case.data_sets[0][0][1]
    return node.op_type != "MatMul" or np.ndim(weight) == 2


FORMS = [(name, "as-is") for name in sorted(CASES)] + [
    (name, "widened") for name in sorted(CASES) if _widenable(CASES[name])
]


@pytest.mark.parametrize("name,form", FORMS)
def test_backend_case(name, form):
    case = CASES[name]
    node = case.model.graph.node[0]
    inputs = list(case.data_sets[0][0])
    if form == "widened":
        inputs = _widen(node, inputs, np.random.default_rng(zlib.crc32(name.encode())))
    model, feeds = _model_with_weight_initializer(case, inputs)
    expected = _run_dense(model, feeds)

    compiled = compile_model(model).model
    eligible = _eligible_shape(node, inputs[1].shape)
    assert _count_sparse(compiled) == (1 if eligible else 0), "compiler rewrote an ineligible layer or missed an eligible one"
    actual = _run_compiled(compiled, feeds)
    assert actual.shape == expected.shape
    k = fmt.reduction_length(inputs[1].shape, _layout(node, inputs[1].shape)) if inputs[1].ndim >= 2 else 1
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6 * max(k, 1) * max(1.0, np.abs(expected).max()))
