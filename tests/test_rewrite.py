"""RewriteSparseOps (its rules) and FoldCompress: each op variant compiled, then run and compared with the
original dense model on the same inputs.

The compiled models run through ``reference_ops`` (an independent Python reference of the ops) and,
in the tests marked ``kernels``, in ONNX Runtime with the custom-op library; the dense original runs
in ONNX Runtime.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import DTYPES, HEAD, make_model, model_with_weight_in_subgraph, random_input, sparse_weight
from reference_ops import run_reference

import onnxsparse
from onnxsparse.api import check_model, compile_model
from onnxsparse.errors import OnnxSparseError
from onnxsparse.io import MAX_IR_VERSION



def ort_run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def kernels_run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return onnxsparse.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)


def op_types(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


# Each case: ONNX text, initializers, input shapes, the ops the compiled model should hold.
M, K, N = 3, 8, 4
B_KN = sparse_weight((K, N), "kn", seed=2)
B_NK = sparse_weight((N, K), "nk", seed=3)
W_CONV = sparse_weight((6, 8, 3, 3), "oihw", seed=4)


def gemm(attrs: str, c_decl: str = "", c_init: dict | None = None, x: tuple = (M, K), b=B_KN, c_input: str = ""):
    inputs = f"float[{x[0]},{x[1]}] x" + (f", {c_decl}" if c_decl else "")
    c_arg = ", C" if (c_decl or c_init is not None) else ""
    text = f"{HEAD} g ({inputs}) => (float[{M},{N}] y) {{ y = Gemm{attrs}(x, B{c_arg}) }}"
    return text, {"B": b, **(c_init or {})}


def conv(attrs: str, x_shape=(1, 8, 9, 9), w=W_CONV, bias=True):
    out = "float[1,6,?,?] y".replace("?", "a", 1).replace("?", "b")
    b_arg = ", Bias" if bias else ""
    text = f"{HEAD} g (float[{','.join(map(str, x_shape))}] x) => ({out}) {{ y = Conv{attrs}(x, W{b_arg}) }}"
    inits = {"W": w}
    if bias:
        inits["Bias"] = random_input((w.shape[0],), seed=9)
    return text, inits


def matmul_add(x: str, y: str, add: str, c_shape: tuple):
    text = f"{HEAD} g (float{x} x) => (float{y} y) {{ p = MatMul(x, B)  {add} }}"
    return text, {"B": B_KN, "C": random_input(c_shape, seed=5)}


CASES = {
    # MatMul, A of rank 1 to 4
    "matmul_rank1": (f"{HEAD} g (float[8] x) => (float[4] y) {{ y = MatMul(x, B) }}", {"B": B_KN}),
    "matmul_rank2": (f"{HEAD} g (float[3,8] x) => (float[3,4] y) {{ y = MatMul(x, B) }}", {"B": B_KN}),
    "matmul_rank3": (f"{HEAD} g (float[2,3,8] x) => (float[2,3,4] y) {{ y = MatMul(x, B) }}", {"B": B_KN}),
    "matmul_rank4": (f"{HEAD} g (float[2,1,3,8] x) => (float[2,1,3,4] y) {{ y = MatMul(x, B) }}", {"B": B_KN}),
    # MatMul + Add of a constant row: folded into the bias where that keeps Add's result
    "matmul_add_row": matmul_add("[2,3,8]", "[2,3,4]", "y = Add(p, C)", (N,)),
    "matmul_add_row_first": matmul_add("[3,8]", "[3,4]", "y = Add(C, p)", (N,)),
    "matmul_add_1x1xn": matmul_add("[2,3,8]", "[2,3,4]", "y = Add(p, C)", (1, 1, N)),
    "matmul_add_1": matmul_add("[3,8]", "[3,4]", "y = Add(p, C)", (1,)),
    "matmul_add_scalar": matmul_add("[8]", "[4]", "y = Add(p, C)", ()),
    "matmul_add_raises_rank": matmul_add("[3,8]", "[1,3,4]", "y = Add(p, C)", (1, 1, N)),
    "matmul_add_mxn": matmul_add("[3,8]", "[3,4]", "y = Add(p, C)", (M, N)),
    "matmul_add_mx1": matmul_add("[3,8]", "[3,4]", "y = Add(p, C)", (M, 1)),
    "matmul_add_input": (f"{HEAD} g (float[3,8] x, float[4] c) => (float[3,4] y) {{ p = MatMul(x, B)  y = Add(p, c) }}",
                         {"B": B_KN}),
    "matmul_add_product_is_output": (
        f"{HEAD} g (float[3,8] x) => (float[3,4] y, float[3,4] p) {{ p = MatMul(x, B)  y = Add(p, C) }}",
        {"B": B_KN, "C": random_input((N,), seed=5)}),
    "matmul_add_two_users": (
        f"{HEAD} g (float[3,8] x) => (float[3,4] y, float[3,4] z) {{ p = MatMul(x, B)  y = Add(p, C)  z = Relu(p) }}",
        {"B": B_KN, "C": random_input((N,), seed=5)}),
    # Gemm: attributes and every form of C
    "gemm_plain": gemm(""),
    "gemm_transB": gemm("<transB=1>", b=B_NK),
    "gemm_transA": gemm("<transA=1>", x=(K, M)),
    "gemm_transA_transB_alpha": gemm("<transA=1, transB=1, alpha=0.5>", x=(K, M), b=B_NK),
    "gemm_c_row": gemm("<alpha=2.0, beta=0.5>", c_init={"C": random_input((N,), seed=5)}),
    "gemm_c_row_beta1": gemm("", c_init={"C": random_input((N,), seed=5)}),
    "gemm_c_1xn": gemm("<beta=-1.5>", c_init={"C": random_input((1, N), seed=5)}),
    "gemm_c_1": gemm("<beta=2.0>", c_init={"C": random_input((1,), seed=5)}),
    "gemm_c_scalar": gemm("<beta=2.0>", c_init={"C": np.array(0.75, np.float32)}),
    "gemm_c_1x1": gemm("", c_init={"C": random_input((1, 1), seed=5)}),
    "gemm_c_mxn": gemm("<beta=0.5>", c_init={"C": random_input((M, N), seed=5)}),
    "gemm_c_mxn_beta1": gemm("", c_init={"C": random_input((M, N), seed=5)}),
    "gemm_c_mx1": gemm("<alpha=3.0>", c_init={"C": random_input((M, 1), seed=5)}),
    "gemm_c_input": gemm("<beta=0.25>", c_decl=f"float[{N}] C"),
    # Conv 2-D: attributes, bias or none
    "conv_plain": conv("", bias=False),
    "conv_bias": conv(""),
    "conv_pads_strides": conv("<pads=[1,2,0,1], strides=[2,1]>"),
    "conv_dilations": conv("<dilations=[2,2], pads=[1,1,1,1]>", bias=False),
    "conv_kernel_shape_attr": conv("<kernel_shape=[3,3]>"),
    "conv_group": conv("<group=2>", w=sparse_weight((6, 4, 3, 3), "oihw", seed=6)),
    "conv_same_upper": conv('<auto_pad="SAME_UPPER", strides=[2,2]>', x_shape=(1, 8, 8, 8)),
    "conv_same_lower": conv('<auto_pad="SAME_LOWER", strides=[2,2]>', x_shape=(1, 8, 8, 8)),
    "conv_valid": conv('<auto_pad="VALID">'),
    "conv_1x1": conv("", w=sparse_weight((6, 8, 1, 1), "oihw", seed=7)),
    "conv_asymmetric_kernel": conv("<pads=[1,0,1,0]>", w=sparse_weight((6, 8, 3, 1), "oihw", seed=8)),
}

EXPECTED_OPS = {
    "gemm_c_mxn": ["MatMulCompress", "Mul", "Add"],
    "gemm_c_mxn_beta1": ["MatMulCompress", "Add"],
    "gemm_c_mx1": ["MatMulCompress", "Add"],
    "gemm_c_input": ["MatMulCompress", "Mul", "Add"],
    "matmul_add_raises_rank": ["MatMulCompress", "Add"],
    "matmul_add_mxn": ["MatMulCompress", "Add"],
    "matmul_add_mx1": ["MatMulCompress", "Add"],
    "matmul_add_input": ["MatMulCompress", "Add"],
    "matmul_add_product_is_output": ["MatMulCompress", "Add"],
    "matmul_add_two_users": ["MatMulCompress", "Add", "Relu"],
}
FUSED_BIAS = {"matmul_add_row", "matmul_add_row_first", "matmul_add_1x1xn", "matmul_add_1", "matmul_add_scalar"}


def case(name):
    text, inits = CASES[name]
    model = make_model(text, **inits)
    onnx.checker.check_model(model, full_check=True)
    feeds = {}
    for i, value in enumerate(model.graph.input):
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = random_input(shape, seed=10 + i)
    return model, feeds


def expected_ops(name: str, fold: bool) -> list[str]:
    if name in EXPECTED_OPS:
        ops = EXPECTED_OPS[name]
    else:
        ops = ["Conv2dCompress" if name.startswith("conv") else "MatMulCompress"]
    return sorted(ops + ([] if fold else ["CompressOp"]))


@pytest.mark.parametrize("fold", [True, False], ids=["fold", "no_fold"])
@pytest.mark.parametrize("name", list(CASES))
def test_variant_matches_dense_model(name, fold):
    model, feeds = case(name)
    result = compile_model(model, fold=fold)
    assert [layer.rewritten for layer in result.layers] == [True]
    assert sorted(op_types(result.model)) == expected_ops(name, fold)
    assert (result.layers[0].fused_bias is not None) == (name in FUSED_BIAS)
    if name in FUSED_BIAS:
        (node,) = [n for n in result.model.graph.node if n.op_type == "MatMulCompress"]
        bias = next(t for t in result.model.graph.initializer if t.name == node.input[3])
        assert list(bias.dims) == [N]
    onnx.checker.check_model(result.model)
    for got, want in zip(run_reference(result.model, feeds), ort_run(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.kernels
@pytest.mark.parametrize("fold", [True, False], ids=["fold", "no_fold"])
@pytest.mark.parametrize("name", list(CASES))
def test_variant_runs_in_onnxruntime(name, fold):
    model, feeds = case(name)
    compiled = compile_model(model, fold=fold).model
    for got, want in zip(kernels_run(compiled, feeds), ort_run(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --- fp16 / bf16: compared with the same model in fp32 --------------------------------------------

LOW_PRECISION = {
    "matmul": ("[3,8]", "[3,4]", "y = MatMul(x, B)", {"B": ((8, 4), "kn")}),
    "gemm": ("[3,8]", "[3,4]", "y = Gemm<transB=1, alpha=0.5, beta=2.0>(x, B, C)", {"B": ((4, 8), "nk"), "C": ((4,), None)}),
    "conv": ("[1,8,6,6]", "[1,6,4,4]", "y = Conv(x, W, Bias)", {"W": ((6, 8, 3, 3), "oihw"), "Bias": ((6,), None)}),
}


def low_precision_case(name: str, dtype: str) -> tuple[onnx.ModelProto, onnx.ModelProto, dict]:
    """The model in ``dtype`` (float in and out, cast inside, so that ONNX Runtime can feed bf16),
    its fp32 twin with the same rounded weights, and an input already rounded to ``dtype``."""
    x_shape, y_shape, body, weights = LOW_PRECISION[name]
    np_dtype = DTYPES[dtype]
    arrays = {
        key: (sparse_weight(shape, layout, np_dtype, seed=20) if layout else random_input(shape, np_dtype, seed=21))
        for key, (shape, layout) in weights.items()
    }
    to = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(np_dtype))
    low = make_model(
        f"""{HEAD} g (float{x_shape} xf) => (float{y_shape} yf) {{
        x = Cast<to={to}>(xf)
        {body}
        yf = Cast<to=1>(y) }}""",
        **arrays,
    )
    twin = make_model(f"{HEAD} g (float{x_shape} x) => (float{y_shape} y) {{ {body} }}",
                      **{k: a.astype(np.float32) for k, a in arrays.items()})
    shape = tuple(int(d) for d in x_shape.strip("[]").split(","))
    x = random_input(shape, np_dtype, seed=22).astype(np.float32)
    return low, twin, x


def assert_rounded_once(got: np.ndarray, want32: np.ndarray, dtype: str) -> None:
    """fp16/bf16 ops accumulate in fp32 and round once: within a couple of the dtype's eps."""
    eps = float(ml_dtypes.finfo(DTYPES[dtype]).eps)
    scale = float(np.abs(want32).max())
    np.testing.assert_allclose(got.astype(np.float32), want32, rtol=2 * eps, atol=2 * eps * scale)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(LOW_PRECISION))
def test_low_precision_matches_fp32(name, dtype):
    low, twin, x = low_precision_case(name, dtype)
    compiled = compile_model(low).model
    assert "MatMulCompress" in op_types(compiled) or "Conv2dCompress" in op_types(compiled)
    (got,) = run_reference(compiled, {"xf": x})
    assert_rounded_once(got, ort_run(twin, {"x": x})[0], dtype)


@pytest.mark.kernels
@pytest.mark.parametrize("fold", [True, False], ids=["fold", "no_fold"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(LOW_PRECISION))
def test_low_precision_runs_in_onnxruntime(name, dtype, fold):
    low, twin, x = low_precision_case(name, dtype)
    (got,) = kernels_run(compile_model(low, fold=fold).model, {"xf": x})
    assert_rounded_once(got, ort_run(twin, {"x": x})[0], dtype)


# --- folding, sharing, dense copies -----------------------------------------------------------------


def initializer_names(model: onnx.ModelProto) -> set[str]:
    return {tensor.name for tensor in model.graph.initializer}


def test_fold_leaves_only_compressed_initializers():
    model, feeds = case("gemm_c_row")
    result = compile_model(model)
    assert initializer_names(result.model) == {"B_values", "B_index", "y_bias"}
    index = next(t for t in result.model.graph.initializer if t.name == "B_index")
    assert index.data_type == onnx.TensorProto.UINT8 and list(index.dims) == [N, 1]
    assert result.weight_bytes_after < result.weight_bytes_before


def test_no_fold_keeps_compress_op_and_dense_weight():
    model, _ = case("matmul_rank2")
    result = compile_model(model, fold=False)
    compress = [node for node in result.model.graph.node if node.op_type == "CompressOp"]
    assert len(compress) == 1 and compress[0].domain == "onnxsparse"
    assert compress[0].input[0] == "B"
    assert onnx.helper.get_attribute_value(compress[0].attribute[0]) == b"kn"
    assert initializer_names(result.model) == {"B"}


def shared_model(second: str, weight: np.ndarray) -> onnx.ModelProto:
    return make_model(
        f"""{HEAD} g (float[2,8] x) => (float[2,8] y, float[2,8] z) {{
        i = Identity(W)
        y = MatMul(x, W)
        z = {second}
        }}""",
        W=weight,
    )


@pytest.mark.parametrize("fold", [True, False], ids=["fold", "no_fold"])
def test_shared_weight_is_compressed_once(fold):
    model = shared_model("MatMul(x, i)", sparse_weight((8, 8), "kn"))
    feeds = {"x": random_input((2, 8))}
    result = compile_model(model, fold=fold)
    assert [layer.rewritten for layer in result.layers] == [True, True]
    assert len(result.compressed) == 1 and len(result.compressed[0].users) == 2
    assert op_types(result.model).count("CompressOp") == (0 if fold else 1)
    assert initializer_names(result.model) == ({"W_values", "W_index"} if fold else {"W"})
    for got, want in zip(run_reference(result.model, feeds), ort_run(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_dense_weight_kept_for_an_ineligible_user():
    model = shared_model("Gemm<transB=1>(x, W)", sparse_weight((8, 8), "kn"))
    feeds = {"x": random_input((2, 8))}
    result = compile_model(model)
    assert [(layer.record.op, layer.rewritten) for layer in result.layers] == [("MatMul", True), ("Gemm", False)]
    assert initializer_names(result.model) == {"W", "W_values", "W_index"}
    for got, want in zip(run_reference(result.model, feeds), ort_run(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_same_weight_in_two_layouts_gets_two_pairs():
    weight = sparse_weight((8, 8), "kn")
    weight = weight * (sparse_weight((8, 8), "nk", seed=5) != 0)  # 2:4 along both axes
    model = shared_model("Gemm<transB=1>(x, W)", weight)
    result = compile_model(model)
    assert sorted((c.source, c.layout) for c in result.compressed) == [("W", "kn"), ("W", "nk")]
    feeds = {"x": random_input((2, 8))}
    for got, want in zip(run_reference(result.model, feeds), ort_run(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_constant_node_weight_is_folded_and_dropped():
    model = make_model(f"""{HEAD} g (float[2,4] x) => (float[2,2] y) {{
        w = Constant<value = float[4,2] {{1, 0, 0, 0, 0, 2, 0, 0}}>()
        y = MatMul(x, w) }}""")
    result = compile_model(model)
    assert op_types(result.model) == ["MatMulCompress"]
    feeds = {"x": random_input((2, 4))}
    np.testing.assert_allclose(run_reference(result.model, feeds)[0], ort_run(model, feeds)[0], rtol=1e-6)


def test_weight_used_in_a_subgraph_is_compressed_once_for_both_users():
    model = model_with_weight_in_subgraph()
    result = compile_model(model)
    assert len(result.rewritten) == 2 and len(result.compressed) == 1
    assert "W" not in initializer_names(result.model)
    assert {"W_values", "W_index"} <= initializer_names(result.model)
    then_branch = next(a.g for a in result.model.graph.node[-1].attribute if a.name == "then_branch")
    assert [t.name for t in then_branch.initializer] == []
    assert [(n.op_type, list(n.input)) for n in then_branch.node] == [("MatMulCompress", ["x", "W_values", "W_index"])]
    feeds = {"x": random_input((2, 8)), "c": np.array(True)}
    for got, want in zip(run_reference(result.model, feeds), ort_run(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_nothing_eligible_returns_the_model_unchanged():
    model = make_model(f"{HEAD} g (float[2,6] x) => (float[2,4] y) {{ y = MatMul(x, W) }}", W=np.ones((6, 4), np.float32))
    result = compile_model(model)
    assert result.rewritten == [] and result.left[0].reason == "K = 6 is not a multiple of 4"
    assert result.model.SerializeToString() == model.SerializeToString()
    assert result.weight_bytes_before == result.weight_bytes_after


def test_policy_keeps_a_layer_dense_with_its_reason():
    model = shared_model("Gemm<transB=0>(x, W)", sparse_weight((8, 8), "kn"))

    def keep_gemm_dense(record):
        return "dense Gemm is faster for this shape" if record.op == "Gemm" else None

    result = compile_model(model, policy=keep_gemm_dense)
    assert [(d.record.op, d.rewritten, d.reason) for d in result.layers] == [
        ("MatMul", True, None),
        ("Gemm", False, "dense Gemm is faster for this shape"),
    ]
    assert sorted(op_types(result.model)) == ["Gemm", "MatMulCompress"]
    assert "W" in initializer_names(result.model)


# --- what the compiled model keeps --------------------------------------------------------------------


def test_compiled_model_keeps_metadata_interface_and_input_untouched():
    text, inits = CASES["conv_bias"]
    model = make_model(text.replace("ir_version: 10", 'ir_version: 12, producer_name: "exporter", model_version: 7'), **inits)
    onnx.helper.set_model_props(model, {"author": "someone"})
    model.graph.node[0].name = "conv0"
    before = model.SerializeToString()
    compiled = compile_model(model).model
    assert model.SerializeToString() == before
    assert compiled.ir_version == MAX_IR_VERSION
    assert (compiled.producer_name, compiled.model_version) == ("exporter", 7)
    assert {p.key: p.value for p in compiled.metadata_props} == {"author": "someone"}
    assert {(o.domain, o.version) for o in compiled.opset_import} == {("", 17), ("onnxsparse", 1)}
    assert [i.name for i in compiled.graph.input] == ["x"]
    assert [o.name for o in compiled.graph.output] == ["y"]
    assert compiled.graph.node[0].name == "conv0_sparse"


def test_overridable_initializer_stays_a_graph_input():
    model = make_model(
        f"{HEAD} g (float[2,8] x, float[8,4] D) => (float[2,4] y, float[2,4] z) {{ y = MatMul(x, W) \n z = MatMul(x, D) }}",
        W=sparse_weight((8, 4), "kn"),
        D=sparse_weight((8, 4), "kn", seed=3),
    )
    compiled = compile_model(model).model
    assert [i.name for i in compiled.graph.input] == ["x", "D"]
    assert "D" in initializer_names(compiled)


# --- shapes for ONNX Runtime ------------------------------------------------------------------------

RESIDUAL_LN = f"""{HEAD} g (float["batch",3,8] x) => (float["batch",3,8] y) {{
    p = MatMul(x, B)
    h = Add(p, C)
    r = Add(h, x)
    y = LayerNormalization<axis=-1>(r, S, T) }}"""


def residual_ln_model() -> onnx.ModelProto:
    return make_model(RESIDUAL_LN, B=sparse_weight((8, 8), "kn", seed=31), C=random_input((8,), seed=32),
                      S=np.ones(8, np.float32), T=np.zeros(8, np.float32))


def dims_of(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_custom_op_outputs_carry_the_inferred_shape():
    compiled = compile_model(residual_ln_model()).model
    (node,) = [n for n in compiled.graph.node if n.op_type == "MatMulCompress"]
    assert node.output[0] == "h"  # the bias Add folded: the op produces the Add's tensor
    value = {v.name: v for v in compiled.graph.value_info}["h"]
    assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims_of(value) == ["batch", 3, 8]
    assert [v.name for v in compiled.graph.input] == ["x"]  # the symbolic input stays symbolic
    assert dims_of(compiled.graph.input[0]) == ["batch", 3, 8]


def test_model_inference_cannot_type_is_compiled_without_shapes():
    # A Reshape to a shape computed at run time: inference types p but cannot give its shape.
    model = make_model(f"""{HEAD} g (float[3,8] x, int64[2] s) => (float[?,?] y) {{
        q = Reshape(x, s)
        y = MatMul(q, B) }}""", B=B_KN)
    compiled = compile_model(model).model
    assert op_types(compiled) == ["Reshape", "MatMulCompress"]
    x = random_input((3, 8), seed=1)
    feeds = {"x": x, "s": np.array([3, 8], np.int64)}
    np.testing.assert_allclose(run_reference(compiled, feeds)[0], ort_run(model, feeds)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.kernels
def test_onnxruntime_fuses_across_the_custom_op(tmp_path):
    """With the shapes, ONNX Runtime's optimizer still fuses the residual Add and the
    LayerNormalization behind a MatMulCompress (SkipLayerNormalization), as it does in the dense model."""
    model = residual_ln_model()
    compiled = compile_model(model).model
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.register_custom_ops_library(onnxsparse.get_library_path())
    session = ort.InferenceSession(compiled.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = op_types(onnx.load(str(tmp_path / "optimized.onnx")))
    assert "SkipLayerNormalization" in optimized and "LayerNormalization" not in optimized
    x = random_input((2, 3, 8), seed=33)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], ort_run(model, {"x": x})[0], rtol=1e-4, atol=1e-4)


# --- the pipeline and its rules ---------------------------------------------------------------------


def test_every_bias_not_folded_has_its_reason():
    model = make_model(
        f"""{HEAD} g (float[3,8] x) => (float[3,4] y, float[3,4] z) {{
        p = MatMul(x, W)
        y = Relu(p)
        q = MatMul(x, V)
        z = Add(q, b)
        }}""",
        W=sparse_weight((8, 4), "kn", seed=1), V=sparse_weight((8, 4), "kn", seed=2), b=random_input((4,), seed=3),
    )
    relu, add = compile_model(model).layers
    assert relu.rewritten and relu.fused_bias is None and relu.rule == "MatMul"
    assert relu.bias_not_folded == "the product is read by a Relu, not by an Add of two inputs"
    assert add.rewritten and add.fused_bias is not None and add.rule == "MatMulBiasAdd" and add.bias_not_folded is None


def test_gemm_with_a_non_constant_c_says_why_it_is_not_folded():
    text, inits = gemm("<transB=0>", c_decl=f"float[{M},{N}] C")
    (layer,) = compile_model(make_model(text, **inits)).layers
    assert layer.rewritten and layer.bias_not_folded.startswith("C is not constant")


def test_identity_cycle_is_a_clear_error_not_a_hang():
    model = make_model(
        f"""{HEAD} g (float[3,8] x) => (float[3,4] y) {{
        a = Identity(b)
        b = Identity(a)
        y = MatMul(x, a)
        }}"""
    )
    with pytest.raises(OnnxSparseError, match="Identity chain behind it is a cycle"):
        check_model(model)


def test_a_failing_pass_is_named():
    from onnxsparse.compiler import ModelGraph, Pass, PassError, Pipeline

    class Broken(Pass):
        def call(self, graph):
            raise ValueError("boom")

    text, inits = CASES["conv_bias"]
    with pytest.raises(PassError, match="^Broken: ValueError: boom$"):
        Pipeline([Broken()])(ModelGraph(make_model(text, **inits)))
