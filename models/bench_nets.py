"""The models benchmarks/gpu_bench.py times, fp16/bf16 with random 2:4 weights.

- ``gemm_models``: LAYERS MatMuls (dense) or MatMulCompress (sparse) on one input X [M, K];
- ``conv_specs`` / ``conv_models``: the distinct eligible convs of a net, LAYERS of one conv per model;
- ``bert_model``: a BERT-large-like encoder; ``resnet_model``: a ResNet-50-like conv net.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper

from onnxsparse import format as fmt

# Layers per model: distinct weights reading one input, so that no weight stays in L2.
LAYERS = 8
ELEM = {"float16": onnx.TensorProto.FLOAT16, "bfloat16": onnx.TensorProto.BFLOAT16}
NP = {"float16": np.float16, "bfloat16": onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.BFLOAT16)}


def fast_24(rows: int, k: int, rng, dtype) -> np.ndarray:
    """A random [rows, K] matrix with a random 2:4 pattern along K (fast, like magnitude pruning of noise)."""
    w = rng.standard_normal((rows, k // 4, 4), dtype=np.float32)
    keep = np.argsort(rng.random((rows, k // 4, 4), dtype=np.float32), axis=-1)[..., :2]
    mask = np.zeros(w.shape, bool)
    np.put_along_axis(mask, keep, True, axis=-1)
    return (np.where(mask, w, 0).reshape(rows, k) * 0.05).astype(dtype)


def _model(nodes, inputs, outputs, inits) -> bytes:
    g = oh.make_graph(nodes, "bench", inputs, outputs, initializer=inits)
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("onnxsparse", 1)])
    m.ir_version = 10
    return m.SerializeToString()


def gemm_models(dtype: str, k: int, n: int, rng):
    """(dense, sparse) models: LAYERS layers on one input X [M, K] (M symbolic)."""
    elem = ELEM[dtype]
    base = fast_24(n, k, rng, NP[dtype])  # [N, K] rows
    values, index = fmt.compress(base)
    x = oh.make_tensor_value_info("X", elem, ["M", k])
    outs = [oh.make_tensor_value_info(f"Y{i}", elem, ["M", n]) for i in range(LAYERS)]
    dense_nodes, dense_inits, sparse_nodes, sparse_inits = [], [], [], []
    for i in range(LAYERS):
        # Distinct weights per layer: rows rolled (the dense W's columns), same cost.
        w_rows = np.roll(base, i * 7, axis=0)
        dense_inits.append(onnx.numpy_helper.from_array(np.ascontiguousarray(w_rows.T), f"W{i}"))
        dense_nodes.append(oh.make_node("MatMul", ["X", f"W{i}"], [f"Y{i}"]))
        sparse_inits += [onnx.numpy_helper.from_array(np.roll(values, i * 7, axis=0), f"V{i}"),
                         onnx.numpy_helper.from_array(np.roll(index, i * 7, axis=0), f"I{i}")]
        sparse_nodes.append(oh.make_node("MatMulCompress", ["X", f"V{i}", f"I{i}"], [f"Y{i}"], domain="onnxsparse"))
    return _model(dense_nodes, [x], outs, dense_inits), _model(sparse_nodes, [x], outs, sparse_inits)


def conv_specs(model: onnx.ModelProto) -> list[dict]:
    """The distinct 2:4-eligible convs of `model` (input channels a multiple of 4): channels, kernel,
    stride, pads and input size, from shape inference with the batch left symbolic."""
    specs = []
    for spec in every_conv_spec(model):
        if spec["c"] % 4 == 0 and spec not in specs:
            specs.append(spec)
    return specs


def every_conv_spec(model: onnx.ModelProto) -> list[dict]:
    """conv_specs' fields for every square-kernel Conv of `model` whose input shape is known, in graph
    order, repeats and ineligible ones included."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    inits = {t.name: t for t in model.graph.initializer}
    specs = []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.input[0] not in shapes:
            continue
        oc, c, kh, kw = inits[node.input[1]].dims
        attrs = {a.name: list(a.ints) for a in node.attribute}
        spec = {"c": c, "oc": oc, "kernel": kh, "stride": attrs.get("strides", [1])[0],
                "pad": attrs.get("pads", [0])[0], "hw": shapes[node.input[0]][2]}
        if kh == kw:
            specs.append(spec)
    return specs


def conv_models(spec: dict, rng):
    """(dense, sparse) models: LAYERS convs of one spec on one input X [B, C, H, W], with a zero
    bias like the BN-folded convs of resnet_model; the sparse one as compile_model rewrites it."""
    from onnxsparse.api import compile_model

    c, oc, k, hw = spec["c"], spec["oc"], spec["kernel"], spec["hw"]
    ohw = (hw + 2 * spec["pad"] - k) // spec["stride"] + 1
    f16 = onnx.TensorProto.FLOAT16
    nodes, inits = [], []
    for i in range(LAYERS):
        inits += [onnx.numpy_helper.from_array(_w(rng, (oc, c, k, k), "oihw"), f"W{i}"),
                  onnx.numpy_helper.from_array(np.zeros(oc, np.float16), f"B{i}")]
        nodes.append(oh.make_node("Conv", ["X", f"W{i}", f"B{i}"], [f"Y{i}"], kernel_shape=[k, k],
                                  strides=[spec["stride"]] * 2, pads=[spec["pad"]] * 4))
    g = oh.make_graph(nodes, "convs", [oh.make_tensor_value_info("X", f16, ["B", c, hw, hw])],
                      [oh.make_tensor_value_info(f"Y{i}", f16, ["B", oc, ohw, ohw]) for i in range(LAYERS)],
                      initializer=inits)
    dense = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    dense.ir_version = 10
    sparse = compile_model(dense).model
    return dense.SerializeToString(), sparse.SerializeToString(), ohw


def _w(rng, shape, layout):
    rows_k = fast_24(*((shape[1], shape[0]) if layout == "kn" else (shape[0], int(np.prod(shape[1:])))), rng, np.float16)
    if layout == "kn":
        return np.ascontiguousarray(rows_k.T)
    oc, c, kh, kw = shape
    return np.ascontiguousarray(rows_k.reshape(oc, kh, kw, c).transpose(0, 3, 1, 2))


def bert_model(layers=24, hidden=1024, ffn=4096, heads=16, seq=384) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    f16 = onnx.TensorProto.FLOAT16
    nodes, inits = [], []

    def init(name, arr):
        inits.append(onnx.numpy_helper.from_array(arr.astype(np.float16) if arr.dtype != np.int64 else arr, name))
        return name

    def linear(x, name, k, n):
        w = init(f"{name}.w", _w(rng, (k, n), "kn"))
        b = init(f"{name}.b", (rng.standard_normal(n) * 0.02).astype(np.float16))
        nodes.append(oh.make_node("MatMul", [x, w], [f"{name}.mm"]))
        nodes.append(oh.make_node("Add", [f"{name}.mm", b], [f"{name}.out"]))
        return f"{name}.out"

    def layernorm(x, name):
        s = init(f"{name}.s", np.ones(hidden, np.float16))
        b = init(f"{name}.b", np.zeros(hidden, np.float16))
        nodes.append(oh.make_node("LayerNormalization", [x, s, b], [f"{name}.out"], axis=-1, epsilon=1e-5))
        return f"{name}.out"

    dh = hidden // heads
    init("shape_bshd", np.array([0, 0, heads, dh], np.int64))
    init("shape_bsh", np.array([0, 0, hidden], np.int64))
    init("scale", np.array(1.0 / np.sqrt(dh), np.float16))
    x = "X"
    for i in range(layers):
        p = f"l{i}"
        qkv = []
        for part in ("q", "k", "v"):
            t = linear(x, f"{p}.{part}", hidden, hidden)
            nodes.append(oh.make_node("Reshape", [t, "shape_bshd"], [f"{p}.{part}.r"]))
            perm = [0, 2, 3, 1] if part == "k" else [0, 2, 1, 3]
            nodes.append(oh.make_node("Transpose", [f"{p}.{part}.r"], [f"{p}.{part}.t"], perm=perm))
            qkv.append(f"{p}.{part}.t")
        nodes.append(oh.make_node("MatMul", [qkv[0], qkv[1]], [f"{p}.s"]))
        nodes.append(oh.make_node("Mul", [f"{p}.s", "scale"], [f"{p}.ss"]))
        nodes.append(oh.make_node("Softmax", [f"{p}.ss"], [f"{p}.p"], axis=-1))
        nodes.append(oh.make_node("MatMul", [f"{p}.p", qkv[2]], [f"{p}.c"]))
        nodes.append(oh.make_node("Transpose", [f"{p}.c"], [f"{p}.ct"], perm=[0, 2, 1, 3]))
        nodes.append(oh.make_node("Reshape", [f"{p}.ct", "shape_bsh"], [f"{p}.cr"]))
        o = linear(f"{p}.cr", f"{p}.o", hidden, hidden)
        nodes.append(oh.make_node("Add", [o, x], [f"{p}.res1"]))
        h = layernorm(f"{p}.res1", f"{p}.ln1")
        f1 = linear(h, f"{p}.f1", hidden, ffn)
        nodes.append(oh.make_node("Gelu", [f1], [f"{p}.g"]) if False else oh.make_node("Relu", [f1], [f"{p}.g"]))
        f2 = linear(f"{p}.g", f"{p}.f2", ffn, hidden)
        nodes.append(oh.make_node("Add", [f2, h], [f"{p}.res2"]))
        x = layernorm(f"{p}.res2", f"{p}.ln2")
    nodes.append(oh.make_node("Identity", [x], ["Y"]))
    g = oh.make_graph(nodes, "bert_large_like", [oh.make_tensor_value_info("X", f16, ["B", seq, hidden])],
                      [oh.make_tensor_value_info("Y", f16, ["B", seq, hidden])], initializer=inits)
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    m.ir_version = 10
    return m


def resnet_model() -> onnx.ModelProto:
    """ResNet-50-like: the stem, bottleneck stages [3, 4, 6, 3], BN folded into conv bias, fp16."""
    rng = np.random.default_rng(2)
    f16 = onnx.TensorProto.FLOAT16
    nodes, inits = [], []
    count = [0]

    def conv(x, c, oc, k, stride=1, relu=True, sparse=True):
        count[0] += 1
        name = f"c{count[0]}"
        shape = (oc, c, k, k)
        w = _w(rng, shape, "oihw") if sparse and c % 4 == 0 else (rng.standard_normal(shape) * 0.05).astype(np.float16)
        w = (w * np.float16(np.sqrt(2.0 / (c * k * k)) / 0.05)).astype(np.float16)
        inits.append(onnx.numpy_helper.from_array(w, f"{name}.w"))
        inits.append(onnx.numpy_helper.from_array(np.zeros(oc, np.float16), f"{name}.b"))
        nodes.append(oh.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.y"], kernel_shape=[k, k],
                                  strides=[stride, stride], pads=[k // 2] * 4))
        if not relu:
            return f"{name}.y"
        nodes.append(oh.make_node("Relu", [f"{name}.y"], [f"{name}.r"]))
        return f"{name}.r"

    x = conv("X", 3, 64, 7, 2, sparse=False)
    nodes.append(oh.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    x, c = "pool", 64
    for stage, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)]):
        for b in range(blocks):
            stride = 2 if (b == 0 and stage > 0) else 1
            out = width * 4
            h = conv(x, c, width, 1)
            h = conv(h, width, width, 3, stride)
            h = conv(h, width, out, 1, relu=False)
            sc = conv(x, c, out, 1, stride, relu=False) if b == 0 else x
            count[0] += 1
            nodes.append(oh.make_node("Add", [h, sc], [f"a{count[0]}"]))
            nodes.append(oh.make_node("Relu", [f"a{count[0]}"], [f"ar{count[0]}"]))
            x, c = f"ar{count[0]}", out
    nodes.append(oh.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(oh.make_node("Flatten", ["gap"], ["flat"]))
    inits.append(onnx.numpy_helper.from_array(_w(rng, (2048, 1000), "kn"), "fc.w"))
    nodes.append(oh.make_node("MatMul", ["flat", "fc.w"], ["Y"]))
    g = oh.make_graph(nodes, "resnet50_like", [oh.make_tensor_value_info("X", f16, ["B", 3, 224, 224])],
                      [oh.make_tensor_value_info("Y", f16, ["B", 1000])], initializer=inits)
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    m.ir_version = 10
    return m
