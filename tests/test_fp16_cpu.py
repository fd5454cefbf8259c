"""fp16 models on the CPU: compiled fp16 models from onnxconverter-common load, and the fp16 kernels run.

- ``keep_io_types=True`` (onnxconverter-common) leaves a ``value_info`` entry in float16 under the name
  of a float32 graph output; the compiled model must keep the output's declared type, else ONNX
  Runtime refuses it ("Type (tensor(float16)) of output arg ... does not match expected type").
- In a compiled fp16 model, ONNX Runtime's CPU session must run the fp16 sparse kernels: no Cast
  that turns ``values`` into float32 in the optimized graph (``SessionOptions.optimized_model_filepath``).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import random_input

import onnxsparse
from onnxsparse.api import compile_model
from models.convnet import build_convnet
from models.transformer import build_transformer

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def output_types(model: onnx.ModelProto) -> dict[str, int]:
    return {value.name: value.type.tensor_type.elem_type for value in model.graph.output}


def keep_io_types_by_hand() -> onnx.ModelProto:
    """The structure onnxconverter-common's ``keep_io_types=True`` writes, built without it: float32
    input and output, Casts at both ends, fp16 inside, and a stale fp16 ``value_info`` of the output."""
    model = build_transformer("float16", hidden=32, ffn=128, layers=1, heads=2)
    graph = model.graph
    (inp,), (out,) = graph.input, graph.output
    inner_in, inner_out = inp.name + "_fp16", out.name + "_fp16"
    for node in graph.node:
        node.input[:] = [inner_in if name == inp.name else name for name in node.input]
        node.output[:] = [inner_out if name == out.name else name for name in node.output]
    stale = onnx.helper.make_tensor_value_info(out.name, FLOAT16, ["batch", "seq", 32])
    graph.value_info.append(stale)
    graph.node.insert(0, onnx.helper.make_node("Cast", [inp.name], [inner_in], to=FLOAT16, name="cast_in"))
    graph.node.append(onnx.helper.make_node("Cast", [inner_out], [out.name], to=FLOAT, name="cast_out"))
    inp.type.tensor_type.elem_type = FLOAT
    out.type.tensor_type.elem_type = FLOAT
    onnx.checker.check_model(model)
    return model


def converted_keep_io_types() -> onnx.ModelProto:
    float16 = pytest.importorskip("onnxconverter_common.float16", reason="onnxconverter-common is not installed")
    model = build_transformer("float32", hidden=32, ffn=128, layers=1, heads=2)
    model = onnx.shape_inference.infer_shapes(model)
    # Exporters that list the graph output in value_info (as the torch exporters can) end up with
    # the stale entry after the conversion.
    model.graph.value_info.append(onnx.helper.make_tensor_value_info("hidden_states", FLOAT, ["batch", "seq", 32]))
    return float16.convert_float_to_float16(model, keep_io_types=True)


@pytest.mark.parametrize("build", [keep_io_types_by_hand, converted_keep_io_types])
def test_keep_io_types_output_keeps_its_declared_dtype(build):
    model = build()
    assert output_types(model) == {"hidden_states": FLOAT}
    result = compile_model(model)
    assert len(result.rewritten) == 6
    assert output_types(result.model) == {"hidden_states": FLOAT}


@pytest.mark.kernels
@pytest.mark.parametrize("build", [keep_io_types_by_hand, converted_keep_io_types])
def test_keep_io_types_model_loads_and_matches_after_compile(build):
    model = build()
    compiled = compile_model(model).model
    x = random_input((2, 5, 32))
    dense = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"tokens": x})[0]
    sparse = onnxsparse.InferenceSession(compiled, providers=["CPUExecutionProvider"]).run(None, {"tokens": x})[0]
    assert sparse.dtype == np.float32
    np.testing.assert_allclose(sparse, dense, rtol=2e-2, atol=2e-2)


# --- the fp16 kernels are the ones that run ------------------------------------------------------


def optimized_graph(model: onnx.ModelProto, tmp_path, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> onnx.ModelProto:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    onnxsparse.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp_path / "optimized.onnx"))


def sparse_inputs_in_float32(optimized: onnx.ModelProto) -> list[str]:
    """The onnxsparse nodes' weight inputs (values, bias) that are float32 in the optimized graph,
    or that a Cast produces: ONNX Runtime moved the node to its float32 kernel."""
    producers = {out: node for node in optimized.graph.node for out in node.output}
    fp32 = {tensor.name for tensor in optimized.graph.initializer if tensor.data_type == FLOAT}
    found = []
    for node in optimized.graph.node:
        if node.domain != "onnxsparse":
            continue
        for name in node.input[1:]:
            producer = producers.get(name)
            if name in fp32 or (producer is not None and producer.op_type == "Cast"):
                found.append(f"{node.op_type} {node.name}: {name}")
    return found


# ONNX Runtime's InsertCastTransformer moves a CPU fp16 node to float32 when the node that feeds it
# and the nodes that read it all lack a CPU fp16 kernel (Conv, BatchNormalization, Relu, Tanh, Add on
# x86) and a float32 kernel of the same op exists ("isolated fp16 node"); Cast(values) is then folded
# into float32 FusedBack_* initializers (docs/semantics.md). In the convnet the last such layer sat
# between a dense Conv and a BatchNormalization: the BN is now folded into it and its Relu fused.
# Where a reader cannot be taken into the op, KeepFp16Kernels puts an identity Reshape after it.
MODELS = {
    "transformer": lambda: build_transformer("float16", hidden=32, ffn=128, layers=1, heads=2),
    "convnet": lambda: build_convnet("float16"),
}


@pytest.mark.kernels
@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL])
@pytest.mark.parametrize("build", list(MODELS.values()), ids=list(MODELS))
def test_fp16_kernels_run_on_cpu(build, level, tmp_path):
    compiled = compile_model(build()).model
    optimized = optimized_graph(compiled, tmp_path, level)
    sparse = [node for node in optimized.graph.node if node.domain == "onnxsparse"]
    assert sparse, "the optimized graph lost the onnxsparse nodes"
    assert sparse_inputs_in_float32(optimized) == []


def chain(before: str, after: str) -> onnx.ModelProto:
    """``before -> MatMul(2:4 W) -> after`` in fp16: the sparse op between two other nodes."""
    after = "Transpose<perm=[0, 1]>" if after == "Transpose" else after
    before = "Transpose<perm=[0, 1]>" if before == "Transpose" else before
    from conftest import make_model, sparse_weight

    text = f"""<ir_version: 10, opset_import: ["" : 17]> g (float16[4,16] x) => (float16[4,8] y) {{
        p = {before}(x)
        m = MatMul(p, W)
        y = {after}(m)
    }}"""
    return make_model(text, W=sparse_weight((16, 8), "kn", np.float16))


@pytest.mark.kernels
@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL])
@pytest.mark.parametrize("before, after", [("Relu", "Relu"), ("Tanh", "Relu"), ("Relu", "Identity"), ("Relu", "Tanh"),
                                           ("Tanh", "Neg"), ("Sigmoid", "Abs"), ("Relu", "Transpose")])
def test_fp16_sparse_op_between_nodes_without_fp16_kernels(before, after, level, tmp_path):
    """Relu is fused into the op; an unfusable reader (Tanh, Neg, Abs) gets the op an identity Reshape
    after it (KeepFp16Kernels), a neighbour with a CPU fp16 kernel that ONNX Runtime keeps."""
    model = chain(before, after)
    compiled = compile_model(model).model
    optimized = optimized_graph(compiled, tmp_path, level)
    fused_back = [t.name for t in optimized.graph.initializer if t.name.startswith("FusedBack_")]
    assert sparse_inputs_in_float32(optimized) == [] and fused_back == []
    x = random_input((4, 16)).astype(np.float16)
    dense = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sparse = onnxsparse.InferenceSession(compiled, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(sparse.astype(np.float32), dense.astype(np.float32), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("before, after, guarded", [("Relu", "Tanh", True), ("Relu", "Relu", False),
                                                    ("Relu", "Transpose", False), ("Transpose", "Tanh", False)])
def test_identity_reshape_only_where_onnx_runtime_would_isolate_the_op(before, after, guarded):
    from onnxsparse.compiler import KeepFp16Result, ModelGraph, compile_pipeline

    graph = ModelGraph(chain(before, after))
    result = compile_pipeline()(graph).of(KeepFp16Result)
    assert bool(result.guarded) == guarded and result.left == []
    reshapes = [node for node in graph.to_model().graph.node if node.op_type == "Reshape"]
    assert len(reshapes) == int(guarded)


def test_no_reshape_for_float32():
    from onnxsparse.compiler import KeepFp16Result, ModelGraph, compile_pipeline
    from conftest import make_model, sparse_weight

    model = make_model("""<ir_version: 10, opset_import: ["" : 17]> g (float[4,16] x) => (float[4,8] y) {
        p = Tanh(x)
        m = MatMul(p, W)
        y = Tanh(m)
    }""", W=sparse_weight((16, 8), "kn"))
    assert compile_pipeline()(ModelGraph(model)).of(KeepFp16Result).guarded == []
