"""BatchNormalization after a rewritten layer is folded into its 2:4 weight and bias (fold_batchnorm)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import DTYPES, make_model, sparse_weight

import onnxsparse
from onnxsparse import format as fmt
from onnxsparse.api import compile_model

HEAD = '<ir_version: 10, opset_import: ["" : 17]>'
TOL = {"float": 1e-4, "float16": 2e-2, "bfloat16": 1e-1}


def bn_params(n: int, dtype, seed: int = 1, var_offset: float = 0.5) -> dict:
    rng = np.random.default_rng(seed)
    return {"sc": (1 + 0.5 * rng.standard_normal(n)).astype(dtype), "bb": rng.standard_normal(n).astype(dtype),
            "mu": rng.standard_normal(n).astype(dtype), "va": (var_offset + rng.random(n)).astype(dtype)}


def conv_bn(dtype: str, bias: bool = True, extra: str = "", out: str = "y") -> onnx.ModelProto:
    np_dtype = DTYPES[dtype]
    b = ", cb" if bias else ""
    text = f"""{HEAD} g ({dtype}[2,8,6,6] x) => ({dtype}[2,16,6,6] {out}) {{
        c = Conv<pads=[1,1,1,1]>(x, W{b})
        y = BatchNormalization<epsilon=0.001>(c, sc, bb, mu, va)
        {extra}
    }}"""
    extra_init = {"cb": np.random.default_rng(3).standard_normal(16).astype(np_dtype)} if bias else {}
    return make_model(text, W=sparse_weight((16, 8, 3, 3), "oihw", np_dtype), **bn_params(16, np_dtype), **extra_init)


def gemm_bn(op: str, dtype: str) -> onnx.ModelProto:
    np_dtype = DTYPES[dtype]
    if op == "Gemm":
        layer, w = "c = Gemm<transB=1, beta=0.5>(x, W, gc)", sparse_weight((16, 8), "nk", np_dtype)
    elif op == "MatMulAdd":
        layer, w = "m = MatMul(x, W)\n c = Add(m, gc)", sparse_weight((8, 16), "kn", np_dtype)
    else:
        layer, w = "c = MatMul(x, W)", sparse_weight((8, 16), "kn", np_dtype)
    text = f"""{HEAD} g ({dtype}[5,8] x) => ({dtype}[5,16] y) {{
        {layer}
        y = BatchNormalization(c, sc, bb, mu, va)
    }}"""
    gc = np.random.default_rng(4).standard_normal(16).astype(np_dtype)
    return make_model(text, W=w, gc=gc, **bn_params(16, np_dtype))


def run(model, x, sparse: bool):
    if sparse:
        return onnxsparse.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def ops(model) -> list[str]:
    return [node.op_type for node in model.graph.node]


def test_conv_bn_is_folded_and_the_pattern_kept():
    result = compile_model(conv_bn("float"))
    (layer,) = result.layers
    assert layer.rewritten and layer.folded_batchnorm and layer.batchnorm_not_folded is None
    assert ops(result.model) == ["Conv2dCompress"]
    node = result.model.graph.node[0]
    assert len(node.input) == 4  # the folded bias
    values = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}
    w = onnx.numpy_helper.to_array(next(t for t in conv_bn("float").graph.initializer if t.name == "W"))
    dense = fmt.decompress_weight(values[node.input[1]], values[node.input[2]], "oihw", w.shape)
    assert np.array_equal(dense == 0, w == 0)  # zeros stay zero: the 2:4 pattern is the original one
    assert not np.array_equal(dense, w)  # scaled


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", ["float", "float16"])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_bn_matches_dense_ort(dtype, bias):
    model = conv_bn(dtype, bias)
    compiled = compile_model(model).model
    assert "BatchNormalization" not in ops(compiled)
    x = np.random.default_rng(0).standard_normal((2, 8, 6, 6)).astype(DTYPES[dtype])
    expected = run(model, x, sparse=False)
    got = run(compiled, x, sparse=True).astype(np.float32)
    np.testing.assert_allclose(got, expected.astype(np.float32), rtol=TOL[dtype], atol=TOL[dtype] * 4)


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", ["float", "float16"])
@pytest.mark.parametrize("op", ["Gemm", "MatMul", "MatMulAdd"])
def test_linear_bn_matches_dense_ort(op, dtype):
    model = gemm_bn(op, dtype)
    result = compile_model(model)
    (layer,) = result.layers
    assert layer.rewritten and layer.folded_batchnorm, layer.batchnorm_not_folded
    assert ops(result.model) == ["MatMulCompress"]
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(DTYPES[dtype])
    np.testing.assert_allclose(run(result.model, x, True).astype(np.float32), run(model, x, False).astype(np.float32),
                               rtol=TOL[dtype], atol=TOL[dtype] * 4)


def test_not_folded_reasons():
    two_readers = conv_bn("float", extra="z = Relu(c)", out="y")
    two_readers.graph.output.append(onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None))
    (layer,) = compile_model(two_readers).layers
    assert layer.rewritten and layer.folded_batchnorm is None
    assert "2 readers" in layer.batchnorm_not_folded

    as_output = conv_bn("float")
    as_output.graph.output.append(onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, None))
    (layer,) = compile_model(as_output).layers
    assert "graph output" in layer.batchnorm_not_folded

    bad_var = conv_bn("float")
    for init in bad_var.graph.initializer:
        if init.name == "va":
            init.CopyFrom(onnx.numpy_helper.from_array(np.full(16, -1.0, np.float32), "va"))
    (layer,) = compile_model(bad_var).layers
    assert "not finite" in layer.batchnorm_not_folded
    assert "BatchNormalization" in ops(compile_model(bad_var).model)

    rank3 = make_model(f"""{HEAD} g (float[2,5,8] x) => (float[2,5,16] y) {{
        c = MatMul(x, W)
        y = BatchNormalization(c, sc, bb, mu, va)
    }}""", W=sparse_weight((8, 16), "kn"), **bn_params(5, np.float32))
    (layer,) = compile_model(rank3).layers
    assert layer.rewritten and "rank-2" in layer.batchnorm_not_folded


def test_shared_weight_keeps_the_other_reader_unscaled():
    model = make_model(f"""{HEAD} g (float[5,8] x) => (float[5,16] y, float[5,16] z) {{
        c = MatMul(x, W)
        y = BatchNormalization(c, sc, bb, mu, va)
        z = MatMul(x, W)
    }}""", W=sparse_weight((8, 16), "kn"), **bn_params(16, np.float32))
    result = compile_model(model)
    assert [d.folded_batchnorm is not None for d in result.layers] == [True, False]
    assert len(result.compressed) == 2


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_fold_is_computed_in_fp32_and_rounded_once(dtype):
    """numpy cannot feed bf16 to ONNX Runtime: the folded weight and bias are checked against the
    float32 formula rounded once to the dtype."""
    np_dtype = DTYPES[dtype]
    model = conv_bn(dtype)
    inits = {t.name: onnx.numpy_helper.to_array(t).astype(np.float32) for t in model.graph.initializer}
    s = inits["sc"] / np.sqrt(inits["va"] + np.float32(0.001))
    want_w = (inits["W"] * s[:, None, None, None]).astype(np_dtype)
    want_b = (s * (inits["cb"] - inits["mu"]) + inits["bb"]).astype(np_dtype)
    compiled = compile_model(model).model
    node = compiled.graph.node[0]
    values = {t.name: onnx.numpy_helper.to_array(t) for t in compiled.graph.initializer}
    got_w = fmt.decompress_weight(values[node.input[1]], values[node.input[2]], "oihw", want_w.shape)
    assert got_w.dtype == want_w.dtype and values[node.input[3]].dtype == want_b.dtype
    np.testing.assert_array_equal(got_w.astype(np.float32), want_w.astype(np.float32))
    np.testing.assert_array_equal(values[node.input[3]].astype(np.float32), want_b.astype(np.float32))


def test_compile_command_says_what_happened_to_the_bn(tmp_path, capsys):
    from onnxsparse import cli

    folded, kept = conv_bn("float"), conv_bn("float")
    kept.graph.output.append(onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, None))
    for name, model in (("folded", folded), ("kept", kept)):
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
        assert cli.main(["compile", str(tmp_path / f"{name}.onnx"), "-o", str(tmp_path / f"{name}_out.onnx")]) == 0
    out = capsys.readouterr().out
    assert "BatchNormalization y folded" in out
    assert "BatchNormalization not folded: BatchNormalization 'y': the layer's output is also a graph output" in out


@pytest.mark.kernels
@pytest.mark.parametrize("fold", [True, False])
def test_conv1d_bn_and_kept_compress_op(fold):
    model = make_model(f"""{HEAD} g (float[2,8,10] x) => (float[2,16,10] y) {{
        c = Conv<pads=[1,1]>(x, W)
        y = BatchNormalization(c, sc, bb, mu, va)
    }}""", W=sparse_weight((16, 8, 1, 3), "oihw").reshape(16, 8, 3), **bn_params(16, np.float32))
    result = compile_model(model, fold=fold)
    (layer,) = result.layers
    assert layer.rewritten and layer.folded_batchnorm
    assert "BatchNormalization" not in ops(result.model)
    x = np.random.default_rng(0).standard_normal((2, 8, 10)).astype(np.float32)
    np.testing.assert_allclose(run(result.model, x, True), run(model, x, False), rtol=1e-4, atol=1e-4)


def test_layer_kept_dense_keeps_its_bn():
    result = compile_model(conv_bn("float"), policy=lambda record: "kept dense by the test")
    assert not result.layers[0].rewritten and result.layers[0].folded_batchnorm is None
    assert ops(result.model) == ["Conv", "BatchNormalization"]


@pytest.mark.kernels
def test_bn_inside_an_if_branch_reads_outer_scope_parameters():
    model = make_model(f"""{HEAD} g (float[5,8] x, bool k) => (float[5,16] z) {{
        z = If(k) <then_branch = t () => (float[5,16] zt) {{ c = MatMul(x, W)
                                                            zt = BatchNormalization(c, sc, bb, mu, va) }},
                    else_branch = e () => (float[5,16] ze) {{ ze = MatMul(x, W) }}>
    }}""", W=sparse_weight((8, 16), "kn"), **bn_params(16, np.float32))
    result = compile_model(model)
    assert [(d.rewritten, d.folded_batchnorm is not None) for d in result.layers] == [(True, True), (True, False)]
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    for k in (True, False):
        feeds = {"x": x, "k": np.array(k)}
        dense = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        sparse = onnxsparse.InferenceSession(result.model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        np.testing.assert_allclose(sparse, dense, rtol=1e-4, atol=1e-4)
