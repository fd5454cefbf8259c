"""The int8 ops' fp16 form (docs/ops.md "int8 ops": ``a_scale`` float16 gives a float16 ``Y``) and the
compiler's ``FoldOutputCast``, which folds a ``Cast(to=FLOAT16)`` after a float-output int8 op into it.

Checked against the float form on the same model, rounded to fp16 by numpy (exactly: the fold keeps
every scale product), and against ONNX Runtime's run of the quantized model followed by its own Cast
(within one fp16 step: ONNX Runtime's float product may round differently)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from test_int8_compile import q_ops, qdq_model

import onnxsparse
from onnxsparse.api import compile_model
from onnxsparse.compiler import FoldOutputCast, ModelGraph
from onnxsparse.compiler.fold_output_cast import fp16_form_scales


def with_fp16_output(model: onnx.ModelProto, cast_to_float: bool = False) -> onnx.ModelProto:
    """The model's float output read by a Cast to float16 (and back to float: ``cast_to_float``), which
    becomes the graph's output."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    out = graph.output[0].name
    graph.node.append(helper.make_node("Cast", [out], [out + "_h"], to=TensorProto.FLOAT16))
    final, dtype = out + "_h", TensorProto.FLOAT16
    if cast_to_float:
        graph.node.append(helper.make_node("Cast", [final], [out + "_f"], to=TensorProto.FLOAT))
        final, dtype = out + "_f", TensorProto.FLOAT
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(final, dtype, None))
    return model


def run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    sess = onnxsparse.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def ort_run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def fp16_steps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many fp16 values lie between a and b (both fp16, finite)."""
    def ordered(x):
        bits = x.astype(np.float16).view(np.int16).astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFF), bits)
    return np.abs(ordered(a) - ordered(b))


def test_fp16_form_scales_keep_the_products():
    rng = np.random.default_rng(0)
    for _ in range(50):
        sa = np.float32(10.0 ** rng.uniform(-9, 1))  # also below float16's range: a_scale' is 1
        sw = (10.0 ** rng.uniform(-5, -1, 64)).astype(np.float32)
        a16, w = fp16_form_scales(np.array(sa), sw)
        assert a16.dtype == np.float16 and w.dtype == np.float32 and w.shape == sw.shape
        np.testing.assert_array_equal((np.float32(a16) * w).astype(np.float32), (sa * sw).astype(np.float32))


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
@pytest.mark.parametrize("adtype", [np.uint8, np.int8])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("per_channel", [True, False])
def test_cast_folds_into_the_fp16_form(op, adtype, relu, per_channel):
    quantized, feeds = qdq_model(op, m=33, k=64, n=40, per_channel=per_channel, adtype=adtype, out_q=False, relu=relu)
    float_form = compile_model(quantized).model
    folded = compile_model(with_fp16_output(quantized)).model
    assert q_ops(folded) == ["QMatMulCompress"]
    assert not [n for n in folded.graph.node if n.op_type == "Cast"], "the Cast was not folded"
    qnode = next(n for n in folded.graph.node if n.op_type == "QMatMulCompress")
    scales = {t.name: t for t in folded.graph.initializer}
    assert scales[qnode.input[1]].data_type == TensorProto.FLOAT16
    sess = onnxsparse.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.get_outputs()[0].type == "tensor(float16)"

    got = sess.run(None, feeds)[0]
    assert got.dtype == np.float16
    want = run(float_form, feeds).astype(np.float16)
    np.testing.assert_array_equal(got, want)  # exact: the multipliers are the float form's
    assert np.abs(want.astype(np.float32)).max() > 1
    # ONNX Runtime's own run of the quantized model and its Cast: within one fp16 step
    reference = ort_run(with_fp16_output(quantized), feeds)
    assert fp16_steps(got, reference).max() <= 1


def test_cast_folds_in_a_float_graph():
    """A Cast to float16 and back (an fp16 island): the op writes fp16, the second Cast stays."""
    quantized, feeds = qdq_model("MatMul", m=5, k=32, n=24, out_q=False)
    folded = compile_model(with_fp16_output(quantized, cast_to_float=True)).model
    assert [n.op_type for n in folded.graph.node] == ["QuantizeLinear", "QMatMulCompress", "Cast"]
    want = run(compile_model(quantized).model, feeds).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(run(folded, feeds), want)


def test_qconv_cast_folds():
    quantized, feeds = qdq_model("Conv", m=2, n=8, out_q=False, conv=dict(c=8, hw=(6, 6), kernel=(3, 3)))
    folded = compile_model(with_fp16_output(quantized)).model
    assert q_ops(folded) == ["QConv2dCompress"]
    assert not [n for n in folded.graph.node if n.op_type == "Cast"]
    want = run(compile_model(quantized).model, feeds).astype(np.float16)
    assert fp16_steps(run(folded, feeds), want).max() <= 1


def test_cast_stays_where_it_must():
    quantized, feeds = qdq_model("MatMul", m=3, k=16, n=8, out_q=False)
    # a second reader of the float output: the op keeps its float form
    model = with_fp16_output(quantized)
    out = model.graph.node[-1].input[0]
    model.graph.node.append(helper.make_node("Relu", [out], ["second"]))
    model.graph.output.append(helper.make_tensor_value_info("second", TensorProto.FLOAT, None))
    compiled = compile_model(model).model
    assert [n.op_type for n in compiled.graph.node].count("Cast") == 1
    # a Cast to another type
    model = with_fp16_output(quantized)
    model.graph.node[-1].attribute[0].i = TensorProto.DOUBLE
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    assert [n.op_type for n in compile_model(model).model.graph.node].count("Cast") == 1


def test_a_scale_fed_at_run_time_is_left_with_the_reason():
    quantized, _ = qdq_model("MatMul", m=3, k=16, n=8, out_q=False)
    model = with_fp16_output(compile_model(quantized).model)
    qnode = next(n for n in model.graph.node if n.op_type == "QMatMulCompress")
    model.graph.input.append(helper.make_tensor_value_info("a_scale_in", TensorProto.FLOAT, []))
    qnode.input[1] = "a_scale_in"
    result = FoldOutputCast()(ModelGraph(model))
    assert not result.modified
    assert result.left and "not constant" in result.left[0][1]
    assert [n.op for n in result.graph.graph.nodes].count("Cast") == 1


def test_compile_command_says_what_it_folded(tmp_path):
    """`onnxsparse compile` of an already compiled model whose int8 op is followed by a Cast to float16
    (what an fp16 conversion writes): nothing to rewrite, the Cast folded, the model written."""
    import subprocess
    import sys

    quantized, feeds = qdq_model("MatMul", m=3, k=16, n=8, out_q=False)
    source = tmp_path / "model.fp16.onnx"
    onnx.save(with_fp16_output(compile_model(quantized).model), source)
    out = tmp_path / "model.folded.onnx"
    done = subprocess.run([sys.executable, "-m", "onnxsparse", "compile", str(source), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "folded 1 Cast to float16 into the int8 op it follows" in done.stdout, done.stdout
    assert "(the model unchanged)" not in done.stdout
    folded = onnx.load(str(out))
    assert [n.op_type for n in folded.graph.node] == ["QuantizeLinear", "QMatMulCompress"]
    np.testing.assert_array_equal(run(folded, feeds), run(onnx.load(str(source)), feeds))
