"""The activation fused into Conv2dCompress and MatMulCompress (compiler pass FuseActivation and the
kernels' epilogue), against ONNX Runtime's dense model for each activation, op and dtype, on every
CPU kernel path this processor has (fast paths: the constant weight packed; generic: the compressed
pair fed at run time, CompressOp kept in the graph)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import pytest

import onnxsparse
from onnxsparse.api import compile_model
from onnxsparse import format as fmt
from onnxsparse.compiler import FuseActivation, ModelGraph

from conftest import DTYPES, ISA_FLAGS, force_cpu_isa

ort = pytest.importorskip("onnxruntime")
CPU = ["CPUExecutionProvider"]


# (name, the activation's nodes on tensor "y" writing "z", extra initializers, expected attributes)
ACTS = {
    "Relu": ([oh.make_node("Relu", ["y"], ["z"])], {}, ("Relu", [])),
    "Relu6": ([oh.make_node("Clip", ["y", "lo", "hi"], ["z"])], {"lo": 0.0, "hi": 6.0}, ("Clip", [0.0, 6.0])),
    "ClipMax": ([oh.make_node("Clip", ["y", "", "hi"], ["z"])], {"hi": 0.5}, ("Clip", [-np.inf, 0.5])),
    "HardSigmoid": ([oh.make_node("HardSigmoid", ["y"], ["z"], alpha=0.3, beta=0.4)], {}, ("HardSigmoid", [0.3, 0.4])),
    "HardSwish": ([oh.make_node("HardSwish", ["y"], ["z"])], {}, ("HardSwish", [])),
    "MulHardSigmoid": ([oh.make_node("HardSigmoid", ["y"], ["s"], alpha=1 / 6, beta=0.5),
                        oh.make_node("Mul", ["s", "y"], ["z"])], {}, ("HardSwish", [1 / 6, 0.5])),
    "Sigmoid": ([oh.make_node("Sigmoid", ["y"], ["z"])], {}, ("Sigmoid", [])),
    "LeakyRelu": ([oh.make_node("LeakyRelu", ["y"], ["z"], alpha=0.1)], {}, ("LeakyRelu", [0.1])),
    "Gelu": ([oh.make_node("Gelu", ["y"], ["z"])], {}, ("Gelu", [])),
}
TOL = {"float": (2e-5, 2e-5), "float16": (4e-3, 4e-3), "bfloat16": (2e-2, 2e-2)}


def _sparse(rng, shape, layout):
    return fmt.prune_weight_magnitude(rng.standard_normal(shape).astype(np.float32), layout)


def layer_model(op: str, act: str, dtype: str, m: int = 4, conv: dict | None = None) -> tuple[onnx.ModelProto, dict]:
    """A float32 model: the layer (MatMul + bias Add, Gemm, or Conv with bias) then the activation;
    weights, bias and input rounded through ``dtype`` so that the float32 model is the reference."""
    rng = np.random.default_rng(hash((op, act, dtype, m)) % 2**32)
    np_dtype = DTYPES[dtype]
    rnd = lambda a: a.astype(np_dtype).astype(np.float32)  # noqa: E731
    inits: dict[str, np.ndarray] = {}
    if op == "Conv":
        c, oc, h, w, k, attrs = conv["c"], conv["oc"], conv["h"], conv["w"], conv["k"], conv.get("attrs", {})
        group = attrs.get("group", 1)
        inits["W"] = rnd(_sparse(rng, (oc, c // group, k, k), "oihw"))
        inits["B"] = rnd(rng.standard_normal(oc).astype(np.float32))
        nodes = [oh.make_node("Conv", ["x", "W", "B"], ["y"], **attrs)]
        x = rnd(rng.standard_normal((1, c, h, w)).astype(np.float32))
    elif op == "MatMul":
        kk, n = 64, 48
        inits["W"] = rnd(_sparse(rng, (kk, n), "kn"))
        inits["B"] = rnd(rng.standard_normal(n).astype(np.float32))
        nodes = [oh.make_node("MatMul", ["x", "W"], ["p"]), oh.make_node("Add", ["p", "B"], ["y"])]
        x = rnd(rng.standard_normal((m, kk)).astype(np.float32))
    else:  # Gemm, transB=1
        kk, n = 64, 40
        inits["W"] = rnd(_sparse(rng, (n, kk), "nk"))
        inits["B"] = rnd(rng.standard_normal(n).astype(np.float32))
        nodes = [oh.make_node("Gemm", ["x", "W", "B"], ["y"], transB=1, alpha=0.5)]
        x = rnd(rng.standard_normal((m, kk)).astype(np.float32))
    act_nodes, scalars, _ = ACTS[act]
    nodes += act_nodes
    inits.update({name: np.array(v, np.float32) for name, v in scalars.items()})
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape))],
                          [oh.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None)],
                          [onnx.numpy_helper.from_array(a, name) for name, a in inits.items()])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 20)], ir_version=10)
    return model, {"x": x}


def as_dtype(model: onnx.ModelProto, dtype: str) -> onnx.ModelProto:
    """The same model in dtype (every float tensor)."""
    if dtype == "float":
        return model
    to = onnx.TensorProto.FLOAT16 if dtype == "float16" else onnx.TensorProto.BFLOAT16
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        array = onnx.numpy_helper.to_array(init).astype(DTYPES[dtype])
        init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
    if dtype == "float16":
        for value in list(out.graph.input) + list(out.graph.output):
            value.type.tensor_type.elem_type = to
        return out
    # ONNX Runtime takes no bfloat16 arrays: float in and out, Casts around the layer.
    for node in out.graph.node:
        node.input[:] = ["x_bf16" if name == "x" else name for name in node.input]
        node.output[:] = ["z_bf16" if name == "z" else name for name in node.output]
    out.graph.node.insert(0, oh.make_node("Cast", ["x"], ["x_bf16"], to=to))
    out.graph.node.append(oh.make_node("Cast", ["z_bf16"], ["z"], to=onnx.TensorProto.FLOAT))
    return out


def run_compiled(model: onnx.ModelProto, feeds: dict, dtype: str, fold: bool = True) -> tuple[np.ndarray, onnx.ModelProto]:
    compiled = compile_model(as_dtype(model, dtype), fold=fold).model
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxsparse.InferenceSession(compiled, sess_options=options, providers=CPU)
    if dtype == "float16":
        feeds = {name: value.astype(np.float16) for name, value in feeds.items()}
    return session.run(None, feeds)[0], compiled


def run_dense(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=CPU).run(None, feeds)[0]


def sparse_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.domain == "onnxsparse" and n.op_type != "CompressOp"]


def check(model, feeds, dtype, act, fold=True):
    expected = run_dense(model, feeds)
    actual, compiled = run_compiled(model, feeds, dtype, fold=fold)
    (node,) = sparse_nodes(compiled)
    attrs = {a.name: oh.get_attribute_value(a) for a in node.attribute}
    name, params = ACTS[act][2]
    assert attrs.get("activation") == name.encode()
    np.testing.assert_allclose(attrs.get("activation_params", []), params, rtol=1e-6)
    assert [n.op_type for n in compiled.graph.node if n.domain in ("", "ai.onnx") and n.op_type != "Cast"] == []  # the activation went
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(actual.astype(np.float32), expected, rtol=rtol, atol=atol * max(1.0, np.abs(expected).max()))


@pytest.fixture(params=list(ISA_FLAGS))
def isa(request, monkeypatch):
    return force_cpu_isa(request.param, monkeypatch)


pytestmark = pytest.mark.kernels


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
@pytest.mark.parametrize("act", list(ACTS))
def test_matmul_activation(isa, op, act, dtype):
    for m in (1, 4, 16, 64):  # Rows tiles, narrow Cols strips (16, 32 wide): every store of the fast path
        model, feeds = layer_model(op, act, dtype, m=m)
        check(model, feeds, dtype, act)


CONVS = [dict(c=16, oc=24, h=9, w=11, k=3, attrs=dict(pads=[1, 1, 1, 1])),
         dict(c=32, oc=20, h=8, w=8, k=1),
         dict(c=16, oc=16, h=10, w=7, k=3, attrs=dict(strides=[2, 2], group=4, pads=[1, 0, 1, 0]))]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("act", list(ACTS))
def test_conv_activation(isa, act, dtype):
    for conv in CONVS:
        model, feeds = layer_model("Conv", act, dtype, conv=conv)
        check(model, feeds, dtype, act)


@pytest.mark.parametrize("op", ["MatMul", "Gemm", "Conv"])
@pytest.mark.parametrize("act", ["Relu6", "HardSwish", "Gelu", "MulHardSigmoid"])
def test_generic_path(isa, op, act):
    """CompressOp kept in the graph: the weight comes at run time, the generic product's store applies it."""
    model, feeds = layer_model(op, act, "float", m=5, conv=CONVS[0])
    check(model, feeds, "float", act, fold=False)


@pytest.mark.parametrize("act", ["Relu", "Sigmoid", "HardSwish"])
def test_non_finite_input(isa, act):
    """NaN/Inf in the input: the fix-up runs first, then the activation (a pass of its own)."""
    model, feeds = layer_model("Conv", act, "float", conv=CONVS[0])
    feeds["x"][0, 3, 2, 2] = np.inf
    feeds["x"][0, 5, 4, 4] = np.nan
    expected = run_dense(model, feeds)
    actual, _ = run_compiled(model, feeds, "float")
    assert np.array_equal(np.isnan(actual), np.isnan(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=2e-5, atol=2e-5 * np.abs(expected[finite]).max())


def _compile(model):
    return compile_model(model).model


def test_not_fused_when_output_is_read_elsewhere():
    model, _ = layer_model("Conv", "Relu", "float", conv=CONVS[1])
    model.graph.output.append(oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None))
    compiled = _compile(model)
    (node,) = sparse_nodes(compiled)
    assert "activation" not in [a.name for a in node.attribute]
    assert [n.op_type for n in compiled.graph.node if n.domain == ""] == ["Relu"]


def test_not_fused_gelu_tanh_and_non_constant_clip():
    model, _ = layer_model("MatMul", "Gelu", "float")
    model.graph.node[-1].attribute.append(oh.make_attribute("approximate", "tanh"))
    graph = ModelGraph(model)
    from onnxsparse.compiler import compile_pipeline
    result = compile_pipeline()(graph).of(type(FuseActivation()(ModelGraph(model))))
    assert not result.fused and "approximate='tanh'" in result.left[0][1]

    model, _ = layer_model("Conv", "ClipMax", "float", conv=CONVS[1])
    model.graph.input.append(oh.make_tensor_value_info("hi", onnx.TensorProto.FLOAT, []))
    model.graph.initializer.remove(next(i for i in model.graph.initializer if i.name == "hi"))
    compiled = _compile(model)
    assert [n.op_type for n in compiled.graph.node if n.domain == ""] == ["Clip"]


def test_kernel_rejects_unknown_activation():
    model, feeds = layer_model("Conv", "Relu", "float", conv=CONVS[1])
    compiled = _compile(model)
    node = sparse_nodes(compiled)[0]
    for a in node.attribute:
        if a.name == "activation":
            a.s = b"Swish"
    with pytest.raises(Exception, match="Conv2dCompress.*'activation' is 'Swish'"):
        onnxsparse.InferenceSession(compiled, providers=CPU).run(None, feeds)


def test_fused_inside_if_body():
    """The pass works in every scope: a MatMul -> Relu inside an If branch is fused there."""
    import onnx.parser

    from onnxsparse.format import prune_weight_magnitude

    w = prune_weight_magnitude(np.random.default_rng(3).standard_normal((8, 4)).astype(np.float32), "kn")
    model = onnx.parser.parse_model(
        '<ir_version: 10, opset_import: ["" : 17]> g (float[2,8] x, bool c) => (float[2,4] z) {'
        " z = If(c) <then_branch = t () => (float[2,4] zt) { p = MatMul(x, W) zt = Relu(p) },"
        " else_branch = e () => (float[2,4] ze) { ze = MatMul(x, W) }> }")
    model.graph.initializer.append(onnx.numpy_helper.from_array(w, "W"))
    compiled = compile_model(model).model
    then_branch = next(a.g for a in compiled.graph.node[0].attribute if a.name == "then_branch")
    (node,) = [n for n in then_branch.node if n.domain == "onnxsparse"]
    assert oh.get_attribute_value(next(a for a in node.attribute if a.name == "activation")) == b"Relu"
    assert [n.op_type for n in then_branch.node if n.domain == ""] == []
    x = np.random.default_rng(4).standard_normal((2, 8)).astype(np.float32)
    session = onnxsparse.InferenceSession(compiled, providers=CPU)
    for c in (True, False):
        feeds = {"x": x, "c": np.array(c)}
        np.testing.assert_allclose(session.run(None, feeds)[0], run_dense(model, feeds), rtol=1e-5, atol=1e-5)
