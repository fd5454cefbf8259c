"""The distinct layer problems of a model at the shapes it will run, and single-layer models of them.

A problem is what decides a layer's speed, and nothing else: the op, its weight shape, the shape of
the activation it multiplies (the graph inputs' dimensions bound to the values the model runs with),
the dtype, the attributes, whether a bias is added, and the activation that follows it in the model.
Layers with equal problems are timed once.

The layer models (copies of one layer: ``copies_for``, and on CPU ``working_set_copies`` so that
they hold about the model's weight bytes) time what the model really pays. The dense side is the layer as ONNX
Runtime runs it in the model: a Conv or Gemm with the activation after it (Relu, Clip, Sigmoid,
LeakyRelu, HardSigmoid, HardSwish, Tanh, Gelu), which ONNX Runtime fuses into its own kernel; a
MatMul with its bias Add, unless ONNX Runtime fuses that Add into what reads it
(SkipLayerNormalization, BiasGelu, ...), where the bias is free on both sides: ``tune`` learns which
Adds ONNX Runtime's optimizer removes from the model itself (``ort_fused_adds``; an erf-decomposed
GELU, as torch.onnx's dynamo exporter writes it, is not fused and leaves its bias Add a separate
pass), and records them for ``compile --target``; without that record the Add's readers decide. The sparse side is
what ``compile_model`` writes for that same model, so that whatever the compiler folds or fuses
into the sparse op is timed too. Weights are random 2:4 (the kernels' speed does not depend on
the values).

A quantized layer (``compiler/quant_rules.py``) is an int8 problem: ``op`` is the product it
computes (MatMul, Gemm, Conv), ``dtype`` is ``"int8"``, and its attributes add the form the model
holds it in (``form``: ``QDQ``, or the QOperator op: QLinearMatMul, QLinearConv, QGemm,
MatMulInteger, ConvInteger), the activation's element type (``a``), the output's (``y``: uint8,
int8 or float) and whether the weight scale is per channel. Its single-layer model is that form on
a float input (QuantizeLinear or DynamicQuantizeLinear in front, DequantizeLinear after a quantized
output), so the dense side is ONNX Runtime's own int8 execution (QLinearMatMul, QLinearConv, QGemm,
MatMulIntegerToFloat after its fusions) and the sparse side is what the compiler makes of it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..compiler.channel_padding import pad_weight, strip_weight
from ..compiler.graph import tensor_array
from ..errors import OnnxSparseError
from ..format import prune_weight_magnitude
from ..io import expected_bytes

# Activations that follow a layer and that ONNX Runtime fuses into a dense Conv or Gemm (one node,
# elementwise, on the layer's output alone).
ACTIVATIONS = ("Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Gelu", "FastGelu")
# Readers of a bias Add that leave it a separate pass in the dense graph (any other reader, e.g. the
# residual Add that becomes SkipLayerNormalization, takes the bias into its own kernel).
BIAS_READERS_UNFUSED = frozenset(
    {"", "Reshape", "Transpose", "Relu", "MatMul", "Gemm", "Flatten", "Squeeze", "Unsqueeze", "Identity",
     "Concat", "Split", "Slice", "Cast"}
)
_ATTRS = {
    "Conv": ("kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"),
    "Gemm": ("alpha", "beta", "transA", "transB"),
    "MatMul": (),
}
_DTYPES = {"float": TensorProto.FLOAT, "float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16,
           "bfloat16": TensorProto.BFLOAT16}


@dataclass(frozen=True)
class Problem:
    """One layer's timing problem (hashable; ``key`` is its canonical text)."""

    op: str
    weight: tuple[int, ...]
    x: tuple  # the activation's shape: ints, or names of dimensions not bound
    dtype: str
    attrs: tuple = ()  # ((name, value), ...) for the attributes that change the computation
    bias: bool = False  # a bias is added (Conv's B, Gemm's C, a MatMul's folded Add)
    activation: str = ""  # e.g. "Relu", "Clip(0,6)", "LeakyRelu(alpha=0.1)"
    padded: int = 0  # a Conv rewritten on its input channels zero-padded to this many (--pad-channels)

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) for d in self.x)

    @property
    def base(self) -> str:
        """The problem without its activation shape (shared by every batch and sequence length)."""
        parts = [self.op, "w=" + "x".join(map(str, self.weight)), self.dtype]
        parts += [f"{name}={_text(value)}" for name, value in self.attrs]
        if self.bias:
            parts.append("bias")
        if self.activation:
            parts.append("+" + self.activation)
        if self.padded:
            parts.append(f"padC={self.padded}")
        return " ".join(parts)

    @property
    def key(self) -> str:
        return f"{self.base} x=" + "x".join(map(str, self.x))

    @property
    def macs(self) -> int:
        """Multiply-adds of the dense layer (for choosing how many copies a timed model holds)."""
        if not self.static:
            return 0
        if self.op == "Conv":
            attrs = dict(self.attrs)
            n, c, h, w = self.x
            strides = attrs.get("strides", (1, 1))
            out_pixels = max(1, (h // strides[0]) * (w // strides[1]))
            return n * out_pixels * math.prod(self.weight)
        m = math.prod(self.x[:-1]) if len(self.x) > 1 else 1
        return m * math.prod(self.weight)

    def to_dict(self) -> dict:
        return {"op": self.op, "weight": list(self.weight), "x": list(self.x), "dtype": self.dtype,
                "attrs": {name: value for name, value in self.attrs}, "bias": self.bias,
                "activation": self.activation, **({"padded": self.padded} if self.padded else {})}


def _text(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(_text, value))
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


@dataclass
class LayerProblem:
    """An eligible layer of the model and its problem."""

    node: str  # the layer's label in the compiler's report
    problem: Problem
    bias_node: str | None = None  # a bias Add after the layer (MatMul: the one the compiler folds)
    fused_bias: bool = False  # the bias Add feeds an op that fuses a bias in the dense graph
    output_shape: tuple | None = None  # the layer's own output (a Conv's gives its GEMM's M)
    # The elementwise nodes after the layer as the model has them (bias Add, activation, or the
    # x * gate(x) pair), in order, and the constant values they read.
    epilogue: list = field(default_factory=list, repr=False)
    constants: dict = field(default_factory=dict, repr=False)
    first_output: str = ""  # the layer node's output the epilogue starts from


# --- shapes ----------------------------------------------------------------------------------


def parse_input_shapes(items: list[str] | None) -> dict[str, list[int]]:
    """``["x:[1,3,48,320]"]`` -> ``{"x": [1, 3, 48, 320]}`` (ValueError says what is wrong)."""
    shapes: dict[str, list[int]] = {}
    for item in items or []:
        name, sep, dims = item.rpartition(":")
        dims = dims.strip()
        if not sep or not name or not (dims.startswith("[") and dims.endswith("]")):
            raise ValueError(f"--input-shapes {item!r}: expected NAME:[D1,D2,...]")
        try:
            values = [int(d) for d in dims[1:-1].split(",") if d.strip()]
        except ValueError:
            raise ValueError(f"--input-shapes {item!r}: dimensions must be positive integers") from None
        if not values or any(v <= 0 for v in values):
            raise ValueError(f"--input-shapes {item!r}: dimensions must be positive integers")
        shapes[name] = values
    return shapes


def bind_inputs(model: onnx.ModelProto, dims: dict[str, int], input_shapes: dict[str, list[int]] | None = None,
                require_static: bool = True) -> onnx.ModelProto:
    """A copy of the model with its inputs' dimensions bound: by name (``dims``) or per input
    (``input_shapes``), for shape inference.

    Raises ``OnnxSparseError`` naming every input dimension still symbolic when ``require_static``.
    """
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    names = {value.name for value in bound.graph.input}
    for name in (input_shapes or {}):
        if name not in names:
            raise OnnxSparseError(f"--input-shapes names '{name}', which is not an input of the model "
                                  f"(inputs: {', '.join(sorted(names)) or 'none'})")
    initializers = {t.name for t in bound.graph.initializer}
    missing = []
    for value in bound.graph.input:
        if value.name in initializers:
            continue
        shape = value.type.tensor_type.shape
        if value.name in (input_shapes or {}):
            given = input_shapes[value.name]
            if len(given) != len(shape.dim):
                raise OnnxSparseError(f"--input-shapes {value.name}: rank {len(given)}, the model's input has "
                                      f"rank {len(shape.dim)}")
            for dim, size in zip(shape.dim, given):
                if dim.HasField("dim_value") and dim.dim_value != size:
                    raise OnnxSparseError(f"--input-shapes {value.name}: dimension {size} where the model fixes "
                                          f"{dim.dim_value}")
                dim.dim_value = size
            continue
        for index, dim in enumerate(shape.dim):
            if dim.HasField("dim_param") and dim.dim_param in dims:
                dim.dim_value = dims[dim.dim_param]
            elif not dim.HasField("dim_value"):
                missing.append(f"'{value.name}' dimension {index}" + (f" ('{dim.dim_param}')" if dim.dim_param else ""))
    if missing and require_static:
        raise OnnxSparseError(
            "the shapes the model will run with are needed; not bound: " + ", ".join(missing)
            + " (give --dim NAME=VALUE or --input-shapes NAME:[D1,...])"
        )
    del bound.graph.value_info[:]
    return bound


def inferred_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """name -> shape for every tensor shape inference types (with data propagation)."""
    from ..compiler.annotate_shapes import inferred_shapes as infer

    return {name: tuple(shape) for name, (_, shape) in infer(model, data_prop=True).items()}


# --- the model's problems --------------------------------------------------------------------


def find_problems(model: onnx.ModelProto, records, shapes: dict[str, tuple],
                  fused_adds: set[str] | None = None) -> list[LayerProblem]:
    """A ``LayerProblem`` for each eligible record (the compiler's report) whose node is top-level.

    ``fused_adds``: the Add nodes ONNX Runtime's optimizer removed from this model (``ort_fused_adds``:
    fused into SkipLayerNormalization, BiasGelu, a Gemm, ...); a MatMul's bias Add among them is free
    on both sides and not timed, any other is timed with the layer. None: guessed from the Add's
    readers (``_bias_fused_downstream``)."""
    nodes = {}
    for node in model.graph.node:
        label = node.name or (f"<{node.op_type} -> {node.output[0]}>" if node.output else f"<{node.op_type}>")
        nodes[label] = node
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    producers = {name: node for node in model.graph.node for name in node.output}
    outputs = {value.name for value in model.graph.output}
    constants = _constants(model)
    found = []
    for record in records:
        node = nodes.get(record.node)
        if node is None or not record.eligible:
            continue
        if getattr(record, "quant", None):
            found.append(_int8_layer_problem(record, node, readers, producers, outputs, constants, shapes))
            continue
        found.append(_layer_problem(record, node, readers, outputs, constants, shapes, fused_adds))
    return found


def ort_fused_adds(model: onnx.ModelProto, provider: str, options) -> set[str] | None:
    """The named Add nodes of ``model`` that ONNX Runtime's optimizer removes (at ``options``' level,
    for ``provider``): the graph it writes after its fusions (``optimized_model_filepath``, weights to
    a side file), compared by node name. None when that cannot be learnt (the session fails, names
    repeat or are missing)."""
    import os
    import tempfile

    from ..session import open_session

    adds = [node.name for node in model.graph.node if node.op_type == "Add"]
    if not adds or any(not name for name in adds) or len(set(adds)) != len(adds):
        return None
    with tempfile.TemporaryDirectory(prefix="onnxsparse-fusions-") as folder:
        path = os.path.join(folder, "optimized.onnx")
        opts = options()
        opts.optimized_model_filepath = path
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.bin")
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        try:
            session = open_session(model, sparse=False, provider=provider, options=opts, quiet=True)
            del session
            kept = {node.name for node in onnx.load(path, load_external_data=False).graph.node}
        except Exception:  # noqa: BLE001 - then the readers decide, as without this
            return None
    return {name for name in adds if name not in kept}


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    found = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    found[node.output[0]] = attr.t
    return found


def _readers(name: str, readers, outputs) -> list:
    return [] if name in outputs else readers.get(name, [])


def _layer_problem(record, node, readers, outputs, constants, shapes, fused_adds=None) -> LayerProblem:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kept = tuple((name, _plain(attrs[name])) for name in _ATTRS.get(node.op_type, ()) if name in attrs)
    x_shape = shapes.get(node.input[0])
    if x_shape is None:
        x_shape = ("?",)
    x_shape = tuple(d if isinstance(d, int) and d > 0 else (d or "?") for d in x_shape)
    dtype = "float32" if record.dtype == "float" else record.dtype
    result = LayerProblem(node=record.node, problem=None, output_shape=shapes.get(node.output[0]),  # type: ignore[arg-type]
                          first_output=node.output[0])
    bias = len(node.input) > 2 and bool(node.input[2])
    steps, texts = [], []
    tail = node.output[0]
    bias_taken = bias
    while True:
        found = _readers(tail, readers, outputs)
        if len(found) == 1 and found[0].op_type == "Identity":
            steps.append(found[0])
            tail = found[0].output[0]
            continue
        add = found[0] if len(found) == 1 and found[0].op_type == "Add" and len(found[0].input) == 2 else None
        if add is not None and not bias_taken:
            other = add.input[1] if add.input[0] == tail else add.input[0]
            if other in constants and other != tail and _is_bias(tensor_array(constants[other]).shape, node.op_type):
                bias_taken = True
                result.bias_node = add.name or add.output[0]
                fused = (add.name in fused_adds if fused_adds is not None
                         else _bias_fused_downstream(add.output[0], readers, outputs))
                if node.op_type == "MatMul" and fused:
                    result.fused_bias = True  # free on both sides: not timed
                    break
                steps.append(add)
                texts.append("Add[" + "x".join(map(str, tensor_array(constants[other]).shape)) + "]")
                tail = add.output[0]
                continue
        if len(found) == 1 and found[0].op_type in ACTIVATIONS and found[0].domain in ("", "ai.onnx", "com.microsoft"):
            steps.append(found[0])
            texts.append(_activation_text(found[0], constants))
        elif len(found) == 2:
            gate = next((r for r in found if r.op_type in ("HardSigmoid", "Sigmoid") and list(r.input) == [tail]), None)
            mul = next((r for r in found if r.op_type == "Mul"), None)
            if gate is not None and mul is not None and sorted(mul.input) == sorted([tail, gate.output[0]]):
                steps += [gate, mul]
                texts.append(f"x*{_activation_text(gate, constants)}(x)")
        break
    result.epilogue = steps
    result.constants = {
        name: tensor_array(constants[name]) for step in steps for name in step.input if name in constants
    }
    if node.op_type == "MatMul" and result.bias_node and not result.fused_bias:
        bias = True  # the compiler folds this Add into MatMulCompress
    result.problem = Problem(op=node.op_type, weight=tuple(record.shape), x=x_shape, dtype=dtype, attrs=kept,
                             bias=bias, activation="+".join(texts), padded=getattr(record, "padded_channels", None) or 0)
    return result


# --- int8 problems (quantized layers) ---------------------------------------------------------------

INT8_BASE_OPS = {"QLinearMatMul": "MatMul", "MatMulInteger": "MatMul", "QGemm": "Gemm", "QLinearConv": "Conv",
                 "ConvInteger": "Conv"}


def _int8_layer_problem(record, node, readers, producers, outputs, constants, shapes) -> LayerProblem:
    """The problem of a quantized layer, read from the ONNX nodes around it (the forms the compiler's
    int8 rules rewrite; ``record`` says which)."""
    form = "QDQ" if record.quant == "QDQ" else node.op_type
    base = INT8_BASE_OPS.get(node.op_type, node.op_type)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kept = [(name, _plain(attrs[name])) for name in _ATTRS[base] if name in attrs]
    x_shape = shapes.get(node.input[0])
    x_shape = tuple(d if isinstance(d, int) and d > 0 else (d or "?") for d in (x_shape or ("?",)))

    def type_of(name: str | None, default: str = "uint8") -> str:
        return str(tensor_array(constants[name]).dtype) if name and name in constants else default

    def size_of(name: str | None) -> int:
        return int(np.prod(constants[name].dims)) if name and name in constants else 1

    def only_reader(name: str, op: str):
        found = _readers(name, readers, outputs)
        return found[0] if len(found) == 1 and found[0].op_type == op else None

    def arg(n, i: int) -> str | None:
        return n.input[i] if len(n.input) > i and n.input[i] else None

    bias, relu, out, tail = False, False, "float", node.output[0]
    if form == "QDQ":
        a_dq = producers.get(node.input[0])
        act = type_of(arg(a_dq, 2)) if a_dq is not None else "uint8"
        w_dq = producers.get(node.input[1])
        while w_dq is not None and w_dq.op_type == "Identity":
            w_dq = producers.get(w_dq.input[0])
        channel = size_of(arg(w_dq, 1)) > 1 if w_dq is not None else False
        bias = arg(node, 2) is not None
        add = only_reader(tail, "Add") if base == "MatMul" else None
        if add is not None and any(name in constants or name in producers and producers[name].op_type == "DequantizeLinear"
                                   for name in add.input if name != tail):
            bias, tail = True, add.output[0]
    elif form in ("MatMulInteger", "ConvInteger"):
        zp = arg(node, 2)
        act = type_of(zp) if zp in constants else "uint8"  # DynamicQuantizeLinear's
        cast = only_reader(tail, "Cast")
        mul = only_reader(cast.output[0], "Mul") if cast is not None else None
        channel = False
        if mul is not None:
            scale = next((name for name in mul.input if name != cast.output[0]), None)
            scale_node = producers.get(scale)
            names = list(scale_node.input) if scale_node is not None and scale_node.op_type == "Mul" else [scale]
            channel = any(size_of(name) > 1 for name in names)
            tail = mul.output[0]
    else:  # QLinearMatMul, QLinearConv, QGemm
        act, channel = type_of(arg(node, 2)), size_of(arg(node, 4)) > 1
        bias = arg(node, {"QLinearConv": 8, "QGemm": 6}.get(form, 99)) is not None
        y_zero_point = arg(node, 8 if form == "QGemm" else 7)
        out = type_of(y_zero_point) if y_zero_point is not None or form != "QGemm" else "float"
        if form == "QGemm" and arg(node, 7) is None:
            out = "float"
    if form in ("QDQ", "MatMulInteger", "ConvInteger"):
        if only_reader(tail, "Relu") is not None:
            relu, tail = True, only_reader(tail, "Relu").output[0]
        quantize = only_reader(tail, "QuantizeLinear") if form == "QDQ" else None
        if quantize is not None:
            out = type_of(arg(quantize, 2))
    kept += [("form", form), ("a", act), ("y", out), ("w_scale", "channel" if channel else "tensor")]
    problem = Problem(op=base, weight=tuple(record.shape), x=x_shape, dtype="int8", attrs=tuple(kept), bias=bias,
                      activation="Relu" if relu else "")
    return LayerProblem(node=record.node, problem=problem, output_shape=shapes.get(node.output[0]),
                        first_output=node.output[0])


def _int8_input_type(problem: Problem) -> int:
    """The element type of an int8 layer's input 0: float for QDQ, the activation's for the QOperator ops."""
    attrs = dict(problem.attrs)
    if attrs.get("form") == "QDQ":
        return TensorProto.FLOAT
    return TensorProto.UINT8 if attrs.get("a") == "uint8" else TensorProto.INT8


def _int8_layer_model(layer: LayerProblem, copies: int, seed: int) -> onnx.ModelProto:
    """``copies`` instances of a quantized layer, in its form, on one float input ``x``."""
    problem = layer.problem
    rng = np.random.default_rng(seed)
    attrs = dict(problem.attrs)
    form, act, out = attrs.pop("form"), np.dtype(attrs.pop("a")), attrs.pop("y")
    channel = attrs.pop("w_scale") == "channel"
    layout = "oihw" if problem.op == "Conv" else ("nk" if problem.op == "Gemm" and attrs.get("transB", 0) else "kn")
    rows = problem.weight[1] if layout == "kn" else problem.weight[0]
    zero = np.array(128 if act == np.uint8 else 0, act)
    nodes, inits = [], []

    def init(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list, outputs: list, domain: str = "", **kwargs) -> str:
        nodes.append(helper.make_node(op, inputs, outputs, name=f"n{len(nodes)}", domain=domain, **kwargs))
        return outputs[0]

    integer = form in ("MatMulInteger", "ConvInteger")
    if integer:
        node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xzp"])
    else:
        node("QuantizeLinear", ["x", init("xs", np.float32(0.02)), init("xzp", zero)], ["xq"])
    if form == "QDQ":
        node("DequantizeLinear", ["xq", "xs", "xzp"], ["xdq"])
    op_attrs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in attrs.items()}
    outs = []
    for index in range(copies):
        p = f"l{index}"
        weight = rng.integers(-127, 128, problem.weight).astype(np.int8)
        w = init(f"{p}.w", prune_weight_magnitude(weight, layout))
        scale = (rng.random(rows) * 0.01 + 0.005).astype(np.float32) if channel else np.float32(0.01)
        if form == "ConvInteger" and channel:  # broadcast along the output channels of [N, OC, OH, OW]
            scale = scale.reshape(rows, 1, 1)
        ws = init(f"{p}.ws", scale)
        wzp = init(f"{p}.wzp", np.zeros(() if form == "ConvInteger" else np.shape(scale), np.int8))
        bias = init(f"{p}.b", rng.integers(-1000, 1000, rows).astype(np.int32)) if problem.bias else ""
        ys = yzp = ""
        if out != "float":
            ys, yzp = init(f"{p}.ys", np.float32(0.05)), init(f"{p}.yzp", np.zeros((), out))
        if form == "QDQ":
            axis = {"axis": 1 if layout == "kn" else 0}
            wdq = node("DequantizeLinear", [w, ws, wzp], [f"{p}.wdq"], **(axis if channel else {}))
            inputs = ["xdq", wdq]
            if bias and problem.op != "MatMul":
                inputs.append(node("DequantizeLinear", [bias, init(f"{p}.bs", (np.float32(0.02) * scale).astype(np.float32))],
                                   [f"{p}.bdq"], **({"axis": 0} if channel else {})))
            y = node(problem.op, inputs, [f"{p}.y"], **op_attrs)
            if bias and problem.op == "MatMul":
                bdq = node("DequantizeLinear", [bias, init(f"{p}.bs", (np.float32(0.02) * scale).astype(np.float32))],
                           [f"{p}.bdq"], **({"axis": 0} if channel else {}))
                y = node("Add", [y, bdq], [f"{p}.yb"])
        elif integer:
            acc = node(form, ["xq", w, "xzp", wzp], [f"{p}.acc"], **op_attrs)
            s = node("Mul", ["xs", ws], [f"{p}.s"])
            y = node("Mul", [node("Cast", [acc], [f"{p}.accf"], to=TensorProto.FLOAT), s], [f"{p}.y"])
        else:
            inputs = ["xq", "xs", "xzp", w, ws, wzp]
            if form == "QGemm":
                inputs += [bias] + ([ys, yzp] if out != "float" else [])
            else:
                inputs += [ys, yzp] + ([bias] if bias else [])
            y = node(form, inputs, [f"{p}.yq" if out != "float" else f"{p}.y"],
                     domain="com.microsoft" if form == "QGemm" else "", **op_attrs)
        if problem.activation == "Relu":
            y = node("Relu", [y], [f"{p}.r"])
        if out != "float" and form == "QDQ":
            y = node("QuantizeLinear", [y, ys, yzp], [f"{p}.yq"])
        if out != "float":
            y = node("DequantizeLinear", [y, ys, yzp], [f"{p}.out"])
        outs.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, [f"d{i}" for i in range(len(problem.x))]))
    graph = helper.make_graph(nodes, f"tune_int8_{form}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(problem.x))],
                              outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    return model


def _is_bias(shape: tuple, op: str) -> bool:
    """A constant an Add can fold into the layer's bias: one value per output feature (a Conv's
    [1, C, 1, 1] or [C, 1, 1]; a MatMul's [N] or [1, N])."""
    if op == "Conv":
        return len(shape) in (3, 4) and shape[-2:] == (1, 1) and all(d == 1 for d in shape[:-3])
    return len(shape) >= 1 and all(d == 1 for d in shape[:-1])


def _bias_fused_downstream(name: str, readers, outputs) -> bool:
    """Whether ONNX Runtime would fuse a MatMul's bias Add into what reads it (SkipLayerNormalization,
    BiasGelu, ...): some reader, through Identity, is not a plain one."""
    kinds = []
    pending = [name]
    while pending:
        current = pending.pop()
        if current in outputs:
            kinds.append("")
        for reader in readers.get(current, []):
            if reader.op_type == "Identity":
                pending.append(reader.output[0])
            else:
                kinds.append(reader.op_type)
    return not all(kind in BIAS_READERS_UNFUSED for kind in kinds)


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, float):
        return round(value, 6)
    return value


def _activation_text(node: onnx.NodeProto, constants) -> str:
    parts = [f"{a.name}={_text(_plain(helper.get_attribute_value(a)))}" for a in sorted(node.attribute, key=lambda a: a.name)]
    for name in node.input[1:]:
        if name and name in constants:
            parts.append(_text(tensor_array(constants[name]).reshape(-1).tolist()))
        elif name:
            parts.append("?")
    return node.op_type + (f"({','.join(parts)})" if parts else "")


def observe_shapes(bound: onnx.ModelProto, layers: list[LayerProblem], feeds: dict, model: onnx.ModelProto) -> dict:
    """Run the bound model once in ONNX Runtime to read the activation shapes shape inference could
    not give (after Reshapes it cannot follow); replaces those layers' problems. Returns node -> shape."""
    from ..session import open_session, ort_message

    nodes = {n.name or (f"<{n.op_type} -> {n.output[0]}>" if n.output else ""): n for n in model.graph.node}
    wanted = {layer.node: nodes[layer.node].input[0] for layer in layers if not layer.problem.static and layer.node in nodes}
    if not wanted:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(bound)
    present = {o.name for o in probe.graph.output}
    for layer in layers:
        name = wanted.get(layer.node)
        if name and name not in present:
            data_type = _int8_input_type(layer.problem) if layer.problem.dtype == "int8" else _DTYPES[layer.problem.dtype]
            probe.graph.output.append(helper.make_tensor_value_info(name, data_type, None))
            present.add(name)
    # The one session factory: a model over 2 GB opens from a temporary file, not from bytes.
    session = open_session(probe, sparse=False, provider="cpu", quiet=True, what="model (run to find its layers' shapes)")
    try:
        names = [o.name for o in session.get_outputs()]
        values = dict(zip(names, session.run(None, feeds)))
    except Exception as exc:  # noqa: BLE001 - the layers stay untimed, with this reason
        raise OnnxSparseError(f"running the model to find its layers' shapes failed: {ort_message(exc)}") from None
    observed = {}
    for layer in layers:
        name = wanted.get(layer.node)
        if name in values:
            shape = tuple(int(d) for d in values[name].shape)
            layer.problem = replace(layer.problem, x=shape)
            observed[layer.node] = list(shape)
    return observed


def distinct(layers: list[LayerProblem]) -> dict[Problem, list[LayerProblem]]:
    """Problems in the order their first layer appears, with the layers that share each."""
    groups: dict[Problem, list[LayerProblem]] = {}
    for layer in layers:
        groups.setdefault(layer.problem, []).append(layer)
    return groups


# --- single-layer models -------------------------------------------------------------------------


def layer_model(layer: LayerProblem, copies: int = 1, seed: int = 0) -> onnx.ModelProto:
    """A dense model of ``copies`` independent instances of the layer (each with its own random 2:4
    weight) reading one input, with the bias and the following activation as in the model."""
    problem = layer.problem
    if not problem.static:
        raise OnnxSparseError(f"{layer.node}: the activation's shape {problem.x} is not static")
    if problem.dtype == "int8":
        return _int8_layer_model(layer, copies, seed)
    rng = np.random.default_rng(seed)
    data_type = _DTYPES[problem.dtype]
    np_dtype = helper.tensor_dtype_to_np_dtype(data_type)
    attrs = dict(problem.attrs)
    nodes, inits, outs = [], [], []
    for index in range(copies):
        p = f"l{index}"
        layout = "oihw" if problem.op == "Conv" else ("nk" if problem.op == "Gemm" and attrs.get("transB", 0) else "kn")
        weight = rng.standard_normal(problem.weight).astype(np.float32).astype(np_dtype)
        if problem.padded:  # 2:4 on the zero-padded channels, written in the layer's own shape
            padded = prune_weight_magnitude(pad_weight(weight, problem.padded), layout)
            weight = strip_weight(padded, problem.weight[1])
        else:
            weight = prune_weight_magnitude(weight, layout)
        inits.append(numpy_helper.from_array(weight, f"{p}.w"))
        inputs = ["x", f"{p}.w"]
        n = problem.weight[0] if layout in ("oihw", "nk") else problem.weight[1]
        if problem.op in ("Conv", "Gemm") and problem.bias:
            inits.append(numpy_helper.from_array((rng.standard_normal(n) * 0.1).astype(np_dtype), f"{p}.b"))
            inputs.append(f"{p}.b")
        node_attrs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in attrs.items()}
        nodes.append(helper.make_node(problem.op, inputs, [f"{p}.y"], name=f"{p}.layer", **node_attrs))
        names = {layer.first_output: f"{p}.y"}
        for j, step in enumerate(layer.epilogue):
            inputs = []
            for name in step.input:
                if name in names:
                    inputs.append(names[name])
                elif name in layer.constants:
                    const = f"{p}.c{j}.{len(inputs)}"
                    inits.append(numpy_helper.from_array(np.asarray(layer.constants[name]), const))
                    inputs.append(const)
                elif not name:
                    inputs.append("")
                else:
                    raise OnnxSparseError(f"{layer.node}: the {step.op_type} after it reads '{name}', not a constant")
            outputs = [f"{p}.s{j}.{k}" for k in range(len(step.output))]
            names.update(zip(step.output, outputs))
            step_attrs = {a.name: helper.get_attribute_value(a) for a in step.attribute}
            nodes.append(helper.make_node(step.op_type, inputs, outputs, name=f"{p}.s{j}", domain=step.domain or "",
                                          **step_attrs))
        tail = names[layer.epilogue[-1].output[0]] if layer.epilogue else f"{p}.y"
        if problem.op == "MatMul" and problem.bias and not any(s.op_type == "Add" for s in layer.epilogue):
            inits.append(numpy_helper.from_array((rng.standard_normal(n) * 0.1).astype(np_dtype), f"{p}.b"))
            nodes.append(helper.make_node("Add", [tail, f"{p}.b"], [f"{p}.yb"], name=f"{p}.bias"))
            tail = f"{p}.yb"
        rank = 2 if problem.op == "Gemm" else len(problem.x)
        outs.append(helper.make_tensor_value_info(tail, data_type, [f"d{i}" for i in range(rank)]))
    graph = helper.make_graph(nodes, f"tune_{problem.op}", [helper.make_tensor_value_info("x", data_type, list(problem.x))],
                              outs, inits)
    opsets = [helper.make_opsetid("", 17)]
    if any(n.domain == "com.microsoft" for n in nodes):
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    if any(n.op_type == "HardSwish" or n.op_type == "Gelu" and n.domain == "" for n in nodes):
        opsets[0] = helper.make_opsetid("", 20)
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return model


def layer_feeds(problem: Problem, seed: int = 1) -> dict[str, np.ndarray]:
    data_type = TensorProto.FLOAT if problem.dtype == "int8" else _DTYPES[problem.dtype]  # int8: quantized inside
    array = np.random.default_rng(seed).standard_normal(problem.x).astype(np.float32)
    return {"x": array.astype(helper.tensor_dtype_to_np_dtype(data_type))}


def copies_for(problem: Problem, target_macs: float = 2e7, most: int = 8) -> int:
    """How many instances a timed model holds so that one run does enough work to time well
    (a layer of a few microseconds would be timed as ONNX Runtime's per-run overhead)."""
    macs = problem.macs
    if macs <= 0:
        return 1
    return int(max(1, min(most, math.ceil(target_macs / macs))))


# Most copies, and most weight bytes, a model timed for its working set holds (256 MiB: past the
# last-level cache a core sees on the CPUs at hand, 32 MiB here, without the memory of a 1 GiB model).
WORKING_SET_COPIES, WORKING_SET_BYTES = 64, 256 << 20


def layer_weight_bytes(problem: Problem) -> int:
    """Bytes of the dense layer's weight (int8 one per element, the float dtypes their size)."""
    size = {"int8": 1, "uint8": 1, "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}.get(problem.dtype, 4)
    return math.prod(problem.weight) * size


def working_set_copies(problem: Problem, model_weight_bytes: int) -> int:
    """How many instances hold about as many weight bytes as the model the layer comes from, so that
    its weights sit in the caches where they would in that model: one layer timed alone stays in
    the processor's cache from run to run, which flatters the dense layer (its run is bounded by how
    fast its weights come in) when the model's weights do not fit there (measured here: a BERT-base
    int8 layer at 4 tokens 0.50x alone and 1.05x among the model's 28.5 MB of weights, the model 1.03x).
    Capped at WORKING_SET_COPIES and WORKING_SET_BYTES."""
    layer = layer_weight_bytes(problem)
    if layer <= 0 or model_weight_bytes <= layer:
        return 1
    most = max(1, min(WORKING_SET_COPIES, WORKING_SET_BYTES // layer))
    return int(min(most, math.ceil(model_weight_bytes / layer)))


def model_weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the constant tensors a run of the model reads whole (from their shapes: external data
    need not be loaded): a table only Gathers read (an embedding) gives a few rows a run, not counted."""
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for slot, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, slot))

    def only_gathered(name: str, depth: int = 0) -> bool:  # through DequantizeLinear / Cast / Identity
        uses = readers.get(name, [])
        return bool(uses) and depth < 4 and all(
            slot == 0 and (node.op_type == "Gather" or (node.op_type in ("DequantizeLinear", "Cast", "Identity")
                                                        and only_gathered(node.output[0], depth + 1)))
            for node, slot in uses)

    gathered = {name for name in readers if only_gathered(name)}
    return sum(expected_bytes(tensor) or 0 for tensor in onnx.external_data_helper._get_all_tensors(model)
               if tensor.name not in gathered)


def compiled_layer_model(dense: onnx.ModelProto, pad_channels: bool = False) -> onnx.ModelProto:
    """What ``onnxsparse compile`` writes for the single-layer model (every eligible layer;
    ``pad_channels``: as ``compile --pad-channels``)."""
    from ..api import compile_model

    result = compile_model(copy.deepcopy(dense), pad_channels=pad_channels)
    if not result.rewritten:
        reasons = "; ".join(sorted({str(layer.reason) for layer in result.left}))
        raise OnnxSparseError(f"the compiler rewrote nothing in the single-layer model: {reasons}")
    return result.model
