"""The int8 rules: quantized Conv/MatMul/Gemm layers -> ``QMatMulCompress`` / ``QConv2dCompress``.

A model quantized by ONNX Runtime's quantizer holds its layers in one of two forms: QDQ (the float
op between ``DequantizeLinear`` nodes) or QOperator (an integer op). Each form is a rule here, in
the style of ``rules.py``: ``check`` looks at the node once and returns a ``QuantMatch`` or the
reason it does not apply; ``rewrite`` builds the int8 op from the match. ``describe`` is the
eligibility check of a quantized layer (the weight: constant int8, zero point 0, scale per tensor
or per output feature, K a multiple of 4 and at most 131,072, 2:4 on the int8 values), then the
rule's check, so that ``onnxsparse check`` gives the same answer as ``compile``.

Rewrites (``A``, ``W`` int8 constant, ``s``/``z`` scales and zero points; the ops' inputs are those
of docs/ops.md: ``A, a_scale, a_zero_point, values, index, w_scale, bias, y_scale, y_zero_point``):

- ``MatMul(DQ(A, sa, za), DQ(W, sw, 0, axis=1)) [-> Add(., DQ(b32, sa*sw, 0))] [-> Relu] [-> Q(., sy, zy)]``
  -> ``QMatMulCompress(A, sa, za, values, index, sw, b32?, sy?, zy?, activation="Relu"?)``; without
  the final ``QuantizeLinear`` the op's output is float. (``Q`` and ``DQ`` are QuantizeLinear and
  DequantizeLinear.)
- ``Gemm(DQ(A), DQ(W, axis=0 if transB else 1), C?)`` -> the same, C as the bias (transA=0, alpha=1).
- ``Conv(DQ(X), DQ(W, axis=0), B?) [-> Relu] [-> Q]`` -> ``QConv2dCompress(X, ..., B?, attributes of Conv)``.
- ``QLinearMatMul(A, sa, za, W, sw, 0, sy, zy)`` -> ``QMatMulCompress(A, sa, za, values, index, sw, , sy, zy)``.
- ``QLinearConv(X, sx, zx, W, sw, 0, sy, zy, B?)`` -> ``QConv2dCompress(X, sx, zx, values, index, sw, B?, sy, zy)``.
- ``QGemm(A, sa, za, W, sw, 0, C?, sy?, zy?)`` (com.microsoft, what the quantizer writes for a Gemm) -> ``QMatMulCompress``.
- ``Mul(Cast(MatMulInteger(A, W, za, 0), to=float), Mul(sa, sw)) [-> Relu] [-> Q]`` (``quantize_dynamic``:
  ``A, sa, za`` from the ``DynamicQuantizeLinear`` in front, which stays) -> ``QMatMulCompress(A, sa, za, values, index, sw)``.
  ``float(acc) * (sa * sw)`` is what Cast and the two Muls compute, in the same fp32 order. A constant
  scale product ``S`` instead of ``Mul(sa, sw)`` gives ``sa = 1``, ``sw = S``.
- ``Mul(Cast(ConvInteger(X, W, zx, 0)), Mul(sx, sw))`` -> ``QConv2dCompress`` likewise.

The bias: an int32 ``DequantizeLinear`` whose scale is ``fp32(sa * sw)`` (relative difference at most
1e-6) and zero point 0 is taken as it is (what ONNX Runtime's quantizer writes); any other constant
bias (float, or quantized with another scale) is requantized to int32 at ``sa * sw`` with rounding half
to even, which moves the output by at most half a step of that accumulator scale.

Refused, each with its reason: a weight that is not a constant int8 tensor (uint8 weights too), a
non-zero weight zero point, a scale along another axis than the output features or blocked, scales
or zero points that are not constants (but the dynamic activation scale), K not a multiple of 4 or
above 131,072, groups of 4 int8 values with more than 2 non-zeros, a float activation (weight-only
quantization), activations other than uint8/int8, a 1-D Conv, Gemm with transA or alpha != 1, and
an integer op whose int32 output is not scaled to float by Cast and Mul. Like ``rules.py`` the rules
run in every scope the rewrite visits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .. import format as fmt
from ..spec import ONNX_DOMAINS, QCONV2D_COMPRESS, QMATMUL_COMPRESS, weight_layout
from .graph import ModelGraph, constant_array, constant_proto, dtype_name, is_omitted, make_constant, producer, resolve_constant
from .layers import LayerRecord, node_label
from .rules import Match, Rule, replace_node

MS_DOMAIN = "com.microsoft"
# K above this could overflow the int32 accumulator (docs/ops.md); the kernels refuse it.
MAX_K = 131_072
# Relative difference under which an int32 bias's scale counts as the accumulator's fp32(sa * sw).
BIAS_SCALE_RTOL = 1e-6
# The integer ops (QOperator form) and their domains.
QOPERATOR_OPS = {"QLinearMatMul": ONNX_DOMAINS, "QLinearConv": ONNX_DOMAINS, "MatMulInteger": ONNX_DOMAINS,
                 "ConvInteger": ONNX_DOMAINS, "QGemm": (MS_DOMAIN,)}
QDQ = "QDQ"
_INT8 = onnx.TensorProto.INT8
_UINT8 = onnx.TensorProto.UINT8
_ACT_TYPES = (np.dtype(np.uint8), np.dtype(np.int8))


def _is_onnx(node: gs.Node | None, op: str) -> bool:
    return node is not None and node.op == op and node.domain in ONNX_DOMAINS


def _input(node: gs.Node, i: int) -> gs.Tensor | None:
    return node.inputs[i] if len(node.inputs) > i and not is_omitted(node.inputs[i]) else None


def _weight_producer(node: gs.Node) -> gs.Node | None:
    """The node computing a layer's weight input, through Identity chains (shared weights)."""
    found = producer(node.inputs[1])
    seen = 0
    while _is_onnx(found, "Identity") and found.inputs and seen < 64:
        found, seen = producer(found.inputs[0]), seen + 1
    return found


def quant_form(node: gs.Node) -> str | None:
    """``"QDQ"`` for a Conv/MatMul/Gemm whose weight a DequantizeLinear computes, the op's name for
    a QOperator node, None for anything else."""
    domains = QOPERATOR_OPS.get(node.op)
    if domains is not None and node.domain in domains:
        return node.op
    if node.op in ("Conv", "MatMul", "Gemm") and node.domain in ONNX_DOMAINS and len(node.inputs) > 1:
        if _is_onnx(_weight_producer(node), "DequantizeLinear"):
            return QDQ
    return None


def _layer_op(node: gs.Node) -> str:
    """The float op a quantized node computes: MatMul, Gemm or Conv."""
    if node.op in ("MatMul", "Gemm", "Conv"):
        return node.op
    return {"QLinearMatMul": "MatMul", "MatMulInteger": "MatMul", "QGemm": "Gemm"}.get(node.op, "Conv")


# --- the weight ------------------------------------------------------------------------------------


@dataclass
class QuantWeight:
    """The int8 weight of a quantized layer and its scale (None: found after the node, Integer ops)."""

    tensor: gs.Tensor  # the int8 constant
    name: str
    shape: tuple[int, ...]
    layout: str
    values: np.ndarray = field(repr=False)
    scale: np.ndarray | None = field(default=None, repr=False)  # float32, [] / [1] or [rows]
    scale_tensor: gs.Tensor | None = None


def _weight_inputs(node: gs.Node) -> tuple[gs.Tensor, gs.Tensor | None, gs.Tensor | None, int | None, str]:
    """(weight, scale, zero point, axis of a per-channel scale, what names them) of a quantized node."""
    if node.op in ("Conv", "MatMul", "Gemm"):
        dq = _weight_producer(node)
        return dq.inputs[0], _input(dq, 1), _input(dq, 2), int(dq.attrs.get("axis", 1)), "the weight's DequantizeLinear"
    if node.op in ("QLinearMatMul", "QLinearConv", "QGemm"):
        return node.inputs[3], _input(node, 4), _input(node, 5), None, node.op
    return node.inputs[1], None, _input(node, 3), None, node.op  # MatMulInteger, ConvInteger


def _rows(shape: tuple[int, ...], layout: str) -> int:
    return shape[1] if layout == "kn" else shape[0]


def _constant(graph, tensor: gs.Tensor | None, what: str) -> np.ndarray | str:
    source, why_not = resolve_constant(graph, tensor)
    if source is None:
        return f"{what} is not constant ({why_not})"
    return constant_array(source.tensor)


def _is_weight(graph, tensor: gs.Tensor) -> bool:
    """A constant, or a DequantizeLinear of one, through Identity chains."""
    node = producer(tensor)
    while _is_onnx(node, "Identity") and node.inputs:
        tensor, node = node.inputs[0], producer(node.inputs[0])
    if _is_onnx(node, "DequantizeLinear"):
        tensor = node.inputs[0]
    return resolve_constant(graph, tensor)[0] is not None


def check_weight(graph, node: gs.Node, record: LayerRecord) -> QuantWeight | str:
    """The weight of a quantized layer, filling the record's weight facts, or why it is not eligible.
    The 2:4 count runs once per record (``record.share`` None)."""
    weight, scale, zero_point, axis, where = _weight_inputs(node)
    record.weight = node.inputs[1].name if record.quant == QDQ else weight.name
    source, why_not = resolve_constant(graph, weight)
    if source is None and _is_onnx(producer(weight), "QuantizeLinear"):
        quantize = producer(weight)
        if _is_weight(graph, quantize.inputs[0]):
            return (f"the weight is quantized at run time by the QuantizeLinear '{quantize.name}' (ONNX Runtime's "
                    "quantizer does so for a weight read through an Identity, such as one shared by two layers), "
                    "so its int8 values are not constant")
        return (f"the second input is an activation quantized at run time (QuantizeLinear '{quantize.name}'), "
                "not a constant weight")
    if source is None:
        return f"the int8 weight is not constant ({why_not})"
    proto = constant_proto(source.tensor)
    record.source, record.shape, record.dtype = source.name, tuple(int(d) for d in proto.dims), dtype_name(proto.data_type)
    if proto.data_type == _UINT8:
        return ("the weight is uint8; only int8 weights with zero point 0 keep the float model's 2:4 zeros "
                "(quantize with weight_type=QuantType.QInt8)")
    if proto.data_type != _INT8:
        return f"the quantized weight is {record.dtype}, not int8"
    op = _layer_op(node)
    rank = len(record.shape)
    if op == "Conv" and rank != 4:
        return f"the int8 Conv is {rank - 2}-D; only 2-D int8 Conv is supported"
    if op != "Conv" and rank != 2:
        return f"the int8 weight has rank {rank}, not 2"
    attrs = node.attrs
    if op == "Gemm" and attrs.get("transA", 0):
        return "Gemm with transA=1 is not supported for int8"
    layout = weight_layout(op, bool(attrs.get("transB", 0)))
    record.layout = layout
    rows = _rows(record.shape, layout)
    if zero_point is not None:
        zp = _constant(graph, zero_point, f"the weight zero point of {where}")
        if isinstance(zp, str):
            return zp
        if np.any(zp != 0):
            return (f"the weight zero point of {where} is not 0 (asymmetric weights): a 'zero' weight would then "
                    "mean one equal to the zero point, which is not the float model's 2:4 pattern")
    found = QuantWeight(source.tensor, source.name, record.shape, layout, constant_array(source.tensor))
    if scale is not None:
        values = _constant(graph, scale, f"the weight scale of {where}")
        if isinstance(values, str):
            return values
        if values.dtype != np.float32:
            return f"the weight scale of {where} is {values.dtype}, not float"
        if record.quant == QDQ and int(_weight_producer(node).attrs.get("block_size", 0)):
            return f"{where} is blocked (block_size); only per-tensor or per-channel scales are supported"
        out_axis = 1 if layout == "kn" else 0
        if values.size != 1:
            per_axis = values.ndim == 1 and values.size == rows
            if axis is not None:  # DequantizeLinear: the scale runs along `axis`
                per_axis = per_axis and axis % rank == out_axis and values.size == record.shape[out_axis]
            if not per_axis:
                return (f"the weight scale of {where} (shape {list(values.shape)}"
                        + (f", axis {axis}" if axis is not None else "")
                        + f") is not per tensor or per output feature (axis {out_axis} of the weight)")
        found.scale, found.scale_tensor = values, scale
    k = record.shape[1] if layout == "oihw" else fmt.reduction_length(record.shape, layout)
    if k % fmt.GROUP:
        return f"{'C/group' if layout == 'oihw' else 'K'} = {k} is not a multiple of 4"
    full_k = fmt.reduction_length(record.shape, layout)
    if full_k > MAX_K:
        return f"K = {full_k} is above {MAX_K:,}, where the int32 accumulator could overflow"
    if record.share is not None:
        return found  # counted before (the rule's check after ``describe``, the rewrite)
    stats = fmt.group_stats(fmt.to_rows_k(found.values, layout))
    record.share = stats.share
    if stats.compliant < stats.groups:
        from .eligibility import percent  # here: eligibility imports this module

        return f"{percent(1 - stats.share)} of groups of 4 int8 values have more than 2 non-zeros"
    return found


def describe(graph, node: gs.Node, index: int, record: LayerRecord | None = None) -> LayerRecord:
    """The layer record of a quantized node (a QDQ layer's record from discovery is updated in place):
    eligible, or the first reason it is not."""
    form = quant_form(node)
    if record is None:
        outputs = [tensor.name for tensor in node.outputs]
        record = LayerRecord(node=node_label(node.name, node.op, outputs), op=node.op, index=index, attrs=dict(node.attrs))
        if node.inputs:
            record.activation = node.inputs[0].name
            record.activation_shape = None if node.inputs[0].shape is None else tuple(node.inputs[0].shape)
        if node.outputs:
            record.output = outputs[0]
            record.output_shape = None if node.outputs[0].shape is None else tuple(node.outputs[0].shape)
    record.quant, record.reason, record.eligible, record.layout, record.share = form, None, False, None, None
    weight = check_weight(graph, node, record)
    if isinstance(weight, str):
        record.reason = weight
        return record
    refused = []
    for rule in rules_for(record):
        found = rule.check(graph, node, record)
        if isinstance(found, Match):
            record.eligible = True
            return record
        refused.append(found)
    record.reason = "; ".join(refused) or f"no int8 rule for {node.op}"
    return record


# --- the match and its pieces ------------------------------------------------------------------------


@dataclass
class QuantMatch(Match):
    """All the int8 rewrite needs: the op's inputs (docs/ops.md order), its attributes and output."""

    new_op: str = ""
    a: gs.Tensor | None = None
    a_scale: gs.Tensor | None = None
    a_zero_point: gs.Tensor | None = None
    w_scale: gs.Tensor | None = None
    q_bias: gs.Tensor | None = None  # the int32 bias as it is in the model
    q_bias_row: np.ndarray | None = field(default=None, repr=False)  # else its int32 values, [N]
    y_scale: gs.Tensor | None = None
    y_zero_point: gs.Tensor | None = None
    activation: str = ""
    attrs: dict = field(default_factory=dict)
    output: gs.Tensor | None = None  # the tensor the new op writes
    absorbed: list = field(default_factory=list)  # nodes after the layer that the op replaces


def _scalar_constant(graph, tensor: gs.Tensor | None, what: str, dtypes=None) -> np.ndarray | str:
    values = _constant(graph, tensor, what)
    if isinstance(values, str):
        return values
    if values.size != 1:
        return f"{what} has shape {list(values.shape)}, not a scalar"
    if dtypes is not None and values.dtype not in dtypes:
        return f"{what} is {values.dtype}, not {' or '.join(str(np.dtype(d)) for d in dtypes)}"
    return values.reshape(())


# An input the rewrite makes as a new constant: (name to start from, its values). Checks never add
# anything to the graph (the eligibility check looks only); ``rewrite`` makes these.
Pending = tuple


def _scalar_tensor(graph, tensor: gs.Tensor, prefix: str, values: np.ndarray) -> gs.Tensor | Pending:
    """The tensor itself when it is already of shape [] or [1], else a scalar constant to make."""
    source, _ = resolve_constant(graph, tensor)
    if source is not None and tuple(constant_proto(source.tensor).dims) in ((), (1,)):
        return tensor
    return (prefix, values.reshape(()))


def _made(graph, tensor: gs.Tensor | Pending | None) -> gs.Tensor | None:
    if isinstance(tensor, tuple):
        return make_constant(graph.unique_name(tensor[0]), tensor[1])
    return tensor


def _values(graph, tensor: gs.Tensor | Pending, what: str) -> np.ndarray | str:
    return tensor[1] if isinstance(tensor, tuple) else _constant(graph, tensor, what)


def _is_runtime_scalar(tensor: gs.Tensor) -> bool:
    """A scale computed in the graph that is a scalar: DynamicQuantizeLinear's, or of known shape [] / [1]."""
    node = producer(tensor)
    if _is_onnx(node, "DynamicQuantizeLinear") and len(node.outputs) > 1 and tensor in node.outputs[1:]:
        return True
    return tensor.shape is not None and all(isinstance(d, int) for d in tensor.shape) and int(np.prod(tensor.shape)) == 1


def _activation_type(tensor: gs.Tensor, zero_point: np.ndarray | None) -> np.dtype | None:
    if zero_point is not None:
        return zero_point.dtype
    node = producer(tensor)
    if _is_onnx(node, "QuantizeLinear"):
        return _q_output_type(node)
    if _is_onnx(node, "DynamicQuantizeLinear"):
        return np.dtype(np.uint8)
    return None if tensor.dtype is None else np.dtype(tensor.dtype)


def _q_output_type(q: gs.Node) -> np.dtype | None:
    """The element type a QuantizeLinear writes (zero point's, else ``output_dtype``, else uint8)."""
    zp = _input(q, 2)
    if zp is not None:
        return None if zp.dtype is None else np.dtype(zp.dtype)
    output_dtype = int(q.attrs.get("output_dtype", 0))
    if output_dtype:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(output_dtype))
    return np.dtype(np.uint8)


def _quantized_activation(graph, match: QuantMatch, a_q: gs.Tensor, scale: gs.Tensor | None,
                          zero_point: gs.Tensor | None, where: str) -> str | None:
    """Fill the activation inputs (A, a_scale, a_zero_point) or say why not."""
    if scale is None:
        return f"{where} has no scale"
    source = None if isinstance(scale, tuple) else resolve_constant(graph, scale)[0]
    if isinstance(scale, tuple):
        match.a_scale = scale
    elif source is not None:
        values = _scalar_constant(graph, scale, f"the activation scale of {where}", (np.float32,))
        if isinstance(values, str):
            return values + " (a per-tensor float scale is needed)"
        match.a_scale = _scalar_tensor(graph, scale, f"{a_q.name}_scale_scalar", values)
    elif _is_runtime_scalar(scale):
        match.a_scale = scale
    else:
        return f"the activation scale of {where} is neither constant nor a scalar computed by DynamicQuantizeLinear"
    zp_values = None
    if zero_point is not None:
        zp_source, _ = resolve_constant(graph, zero_point)
        if zp_source is not None:
            zp_values = _scalar_constant(graph, zero_point, f"the activation zero point of {where}")
            if isinstance(zp_values, str):
                return zp_values
            match.a_zero_point = _scalar_tensor(graph, zero_point, f"{a_q.name}_zero_point_scalar", zp_values)
        elif _is_runtime_scalar(zero_point):
            match.a_zero_point = zero_point
        else:
            return f"the activation zero point of {where} is neither constant nor computed by DynamicQuantizeLinear"
    dtype = _activation_type(a_q, zp_values)
    if dtype is None:
        return f"the element type of the quantized activation '{a_q.name}' is unknown"
    if dtype not in _ACT_TYPES:
        return f"the activation is quantized to {dtype}; the int8 ops take uint8 or int8"
    match.a = a_q
    return None


def _acc_scale(graph, match: QuantMatch, w_scale: np.ndarray, rows: int) -> np.ndarray | str:
    """fp32(a_scale * w_scale[n]) as [rows], for the bias; the activation scale must be constant."""
    a_scale = _values(graph, match.a_scale, "the activation scale")
    if isinstance(a_scale, str):
        return "a bias needs a constant activation scale: " + a_scale
    return np.broadcast_to((np.float32(a_scale.reshape(())) * w_scale.reshape(-1)).astype(np.float32), (rows,))


def _requantize(values: np.ndarray, acc_scale: np.ndarray, what: str) -> np.ndarray | str:
    q = np.rint(values.astype(np.float64) / acc_scale.astype(np.float64))
    if not np.all(np.isfinite(q)) or np.abs(q).max(initial=0) > np.iinfo(np.int32).max:
        return f"{what} does not fit int32 at the accumulator's scale"
    return q.astype(np.int32)


def _through_identity(tensor: gs.Tensor) -> gs.Tensor:
    """The tensor an Identity chain passes on (the tensor itself when no Identity computes it). A
    torch.onnx export shares equal constants through Identity nodes (the zero biases of a randomly
    initialised model), and ONNX Runtime's quantizer then puts its DequantizeLinear before the Identity."""
    node, seen = producer(tensor), 0
    while _is_onnx(node, "Identity") and node.inputs and seen < 64:
        tensor, node, seen = node.inputs[0], producer(node.inputs[0]), seen + 1
    return tensor


def _bias(graph, match: QuantMatch, tensor: gs.Tensor, rows: int, acc_scale, what: str, beta: float = 1.0) -> str | None:
    """Fill the int32 bias from a bias input (DequantizeLinear of int32, or any constant, through
    Identity nodes) or say why not."""
    tensor = _through_identity(tensor)
    node = producer(tensor)
    if _is_onnx(node, "DequantizeLinear"):
        q = _constant(graph, node.inputs[0], f"the quantized {what}")
        scale = _constant(graph, _input(node, 1), f"the scale of the {what}'s DequantizeLinear")
        zp = _constant(graph, _input(node, 2), f"the zero point of the {what}'s DequantizeLinear") \
            if _input(node, 2) is not None else np.zeros((), q.dtype if isinstance(q, np.ndarray) else np.int32)
        for found in (q, scale, zp):
            if isinstance(found, str):
                return found
        if q.size not in (1, rows) or scale.size not in (1, rows) or zp.size not in (1, rows):
            return f"the {what} of shape {list(q.shape)} is not a row of {rows}"
        if isinstance(acc_scale, str):
            return acc_scale
        same = (q.dtype == np.int32 and beta == 1.0 and not np.any(zp)
                and np.allclose(np.broadcast_to(scale.reshape(-1), (rows,)), acc_scale, rtol=BIAS_SCALE_RTOL, atol=0))
        if same:
            if q.shape == (rows,):
                match.q_bias = node.inputs[0]
            else:
                match.q_bias_row = np.broadcast_to(q.reshape(-1), (rows,)).astype(np.int32)
            return None
        dequantized = (q.astype(np.float32) - zp.astype(np.float32)).reshape(-1) * scale.reshape(-1).astype(np.float32)
        values = np.float32(beta) * np.broadcast_to(dequantized, (rows,))
    else:
        values = _constant(graph, tensor, f"the {what}")
        if isinstance(values, str):
            return values
        if values.dtype.kind != "f":
            return f"the {what} is {values.dtype}, neither float nor a DequantizeLinear of int32"
        if values.size not in (1, rows) or any(d != 1 for d in values.shape[:-1]):
            return f"the {what} of shape {list(values.shape)} is not a row of {rows}"
        if isinstance(acc_scale, str):
            return acc_scale
        values = np.float32(beta) * np.broadcast_to(values.reshape(-1).astype(np.float32), (rows,))
    found = _requantize(values, acc_scale, f"the {what}")
    if isinstance(found, str):
        return found
    match.q_bias_row = found
    return None


def _constant_dims(graph, tensor: gs.Tensor) -> tuple[int, ...] | None:
    """The shape of a constant, or of the constant a DequantizeLinear dequantizes (None: neither),
    through Identity nodes."""
    tensor = _through_identity(tensor)
    node = producer(tensor)
    if _is_onnx(node, "DequantizeLinear"):
        tensor = node.inputs[0]
    source, _ = resolve_constant(graph, tensor)
    return None if source is None else tuple(constant_proto(source.tensor).dims)


def _only_reader(graph, tensor: gs.Tensor) -> gs.Node | None:
    """The one node reading ``tensor`` when it is read by exactly one and is no graph output."""
    if any(out is tensor for out in graph.graph.outputs) or len(tensor.outputs) != 1:
        return None
    return tensor.outputs[0]


def _output_side(graph, match: QuantMatch, tensor: gs.Tensor) -> str | None:
    """After the float result ``tensor``: an optional Relu, then an optional QuantizeLinear."""
    reader = _only_reader(graph, tensor)
    if _is_onnx(reader, "Relu") and len(reader.outputs) == 1:
        match.activation = "Relu"
        match.absorbed.append(reader)
        tensor = reader.outputs[0]
        reader = _only_reader(graph, tensor)
    match.output = tensor
    if not _is_onnx(reader, "QuantizeLinear") or reader.inputs[0] is not tensor or len(reader.outputs) != 1:
        return None  # the op's output stays float
    scale = _scalar_constant(graph, _input(reader, 1), "the output QuantizeLinear's scale", (np.float32,))
    if isinstance(scale, str):
        return None  # not one the op can take: keep the QuantizeLinear after a float output
    zero_point = _input(reader, 2)
    if zero_point is not None:
        zp = _scalar_constant(graph, zero_point, "the output QuantizeLinear's zero point")
        if isinstance(zp, str) or zp.dtype not in _ACT_TYPES:
            return None
        zp_tensor = _scalar_tensor(graph, zero_point, f"{tensor.name}_zero_point_scalar", zp)
    else:
        dtype = _q_output_type(reader)
        if dtype not in _ACT_TYPES:
            return None
        zp_tensor = (f"{tensor.name}_zero_point", np.zeros((), dtype))
    match.y_scale = _scalar_tensor(graph, reader.inputs[1], f"{tensor.name}_scale_scalar", scale)
    match.y_zero_point = zp_tensor
    match.absorbed.append(reader)
    match.output = reader.outputs[0]
    return None


def _w_scale_tensor(graph, match: QuantMatch, scale: np.ndarray, original: gs.Tensor | None, rows: int, base: str) -> None:
    """w_scale as docs/ops.md takes it: the model's tensor when it is [], [1] or [rows], else a new constant."""
    shape = tuple(scale.shape)
    if original is not None and (shape in ((), (1,)) or shape == (rows,)):
        source, _ = resolve_constant(graph, original)
        if source is not None and tuple(constant_proto(source.tensor).dims) == shape:
            match.w_scale = original
            return
    values = scale.reshape(()) if scale.size == 1 else scale.reshape(rows)
    match.w_scale = (f"{base}_w_scale", values.astype(np.float32))


# --- the rules ---------------------------------------------------------------------------------------


class QuantRule(Rule):
    """Common steps of the int8 rules; ``form`` is the record's ``quant``, ``op`` the node's op."""

    form = QDQ

    def _start(self, graph, node: gs.Node, record: LayerRecord) -> tuple[QuantMatch, QuantWeight] | str:
        if node.op != self.op:
            return f"node is a {node.op}, not a {self.op}"
        weight = check_weight(graph, node, record)
        if isinstance(weight, str):
            return weight
        new_op = QCONV2D_COMPRESS if _layer_op(node) == "Conv" else QMATMUL_COMPRESS
        match = QuantMatch(self, node, weight.tensor, _INT8, weight.shape, new_op=new_op)
        if new_op == QCONV2D_COMPRESS:
            attrs = {k: v for k, v in node.attrs.items() if k in ("strides", "pads", "dilations", "group", "auto_pad")}
            attrs["kernel_shape"] = list(weight.shape[2:])
            match.attrs = attrs
        elif node.inputs and node.inputs[0].shape is not None and not 1 <= len(node.inputs[0].shape) <= 4:
            return f"{node.op} input A has rank {len(node.inputs[0].shape)}; only ranks 1 to 4 are supported"
        return match, weight

    def rewrite(self, graph: ModelGraph, match: QuantMatch, sparse: tuple[gs.Tensor, gs.Tensor]) -> gs.Node:
        node = match.node
        base = node.name or node.outputs[0].name
        bias = match.q_bias
        if bias is None and match.q_bias_row is not None:
            bias = make_constant(graph.unique_name(f"{base}_bias_int32"), match.q_bias_row)
        empty = gs.Variable.empty
        a_zero_point = _made(graph, match.a_zero_point)
        inputs = [match.a, _made(graph, match.a_scale), a_zero_point if a_zero_point is not None else empty(),
                  *sparse, _made(graph, match.w_scale), bias if bias is not None else empty()]
        if match.y_scale is not None:
            inputs += [_made(graph, match.y_scale), _made(graph, match.y_zero_point)]
        while is_omitted(inputs[-1]):
            inputs.pop()
        attrs = dict(match.attrs)
        if match.activation:
            attrs["activation"] = match.activation
        output = match.output
        for other in match.absorbed:
            graph.remove_node(other)
        if match.add is not None:
            graph.remove_node(match.add)
        return replace_node(graph, node, match.new_op, inputs, attrs, outputs=[output])


class QdqLayer(QuantRule):
    """``MatMul``/``Gemm``/``Conv`` between DequantizeLinear nodes (QDQ)."""

    def check(self, graph, node, record):
        started = self._start(graph, node, record)
        if isinstance(started, str):
            return started
        match, weight = started
        if weight.scale is None:
            return "the weight's DequantizeLinear has no scale"
        rows = _rows(weight.shape, weight.layout)
        a_dq = producer(node.inputs[0])
        if not _is_onnx(a_dq, "DequantizeLinear"):
            return ("the activation is float (no DequantizeLinear in front): weight-only int8 is not supported; "
                    "quantize activations too (quantize_static or quantize_dynamic)")
        if int(a_dq.attrs.get("block_size", 0)):
            return "the activation's DequantizeLinear is blocked (block_size), not per tensor"
        why = _quantized_activation(graph, match, a_dq.inputs[0], _input(a_dq, 1), _input(a_dq, 2),
                                    "the activation's DequantizeLinear")
        if why:
            return why
        _w_scale_tensor(graph, match, weight.scale, weight.scale_tensor, rows, weight.name)
        acc_scale = _acc_scale(graph, match, weight.scale, rows)
        result = node.outputs[0]
        if node.op == "Gemm":
            if float(node.attrs.get("alpha", 1.0)) != 1.0:
                return "Gemm with alpha != 1 is not supported for int8"
            c = _input(node, 2)
            if c is not None:
                why = _bias(graph, match, c, rows, acc_scale, "Gemm's C", float(node.attrs.get("beta", 1.0)))
                if why:
                    return why
        elif node.op == "Conv":
            b = _input(node, 2)
            if b is not None:
                why = _bias(graph, match, b, rows, acc_scale, "Conv's bias")
                if why:
                    return why
        else:  # MatMul: an Add of a bias row after it, when one is there
            add = _only_reader(graph, result)
            if _is_onnx(add, "Add") and len(add.inputs) == 2 and add.inputs[0] is not add.inputs[1]:
                other = add.inputs[1] if add.inputs[0] is result else add.inputs[0]
                dims = _constant_dims(graph, other)
                a_shape = node.inputs[0].shape
                # The row must not raise the product's rank by broadcasting (as rules.MatMulBiasAdd).
                product_rank = 1 if a_shape is None or len(a_shape) <= 1 else len(a_shape)
                rank_ok = dims is not None and len(dims) <= product_rank
                trial = QuantMatch(self, node, weight.tensor, _INT8, weight.shape)
                if rank_ok and not isinstance(acc_scale, str) and _bias(graph, trial, other, rows, acc_scale, "bias") is None:
                    match.q_bias, match.q_bias_row = trial.q_bias, trial.q_bias_row
                    match.add, match.folded_add = add, add.name or add.outputs[0].name
                    result = add.outputs[0]
        _output_side(graph, match, result)
        return match


class QLinearLayer(QuantRule):
    """``QLinearMatMul``, ``QLinearConv`` and com.microsoft's ``QGemm``: every input is already there."""

    def check(self, graph, node, record):
        started = self._start(graph, node, record)
        if isinstance(started, str):
            return started
        match, weight = started
        if weight.scale is None:
            return f"{node.op} has no weight scale"
        rows = _rows(weight.shape, weight.layout)
        why = _quantized_activation(graph, match, node.inputs[0], _input(node, 1), _input(node, 2), node.op)
        if why:
            return why
        _w_scale_tensor(graph, match, weight.scale, weight.scale_tensor, rows, weight.name)
        y_at, bias_at = {"QLinearMatMul": (6, None), "QLinearConv": (6, 8), "QGemm": (7, 6)}[node.op]
        if node.op == "QGemm" and float(node.attrs.get("alpha", 1.0)) != 1.0:
            return "QGemm with alpha != 1 is not supported"
        bias = _input(node, bias_at) if bias_at is not None else None
        if bias is not None:
            values = _constant(graph, bias, f"{node.op}'s bias")
            if isinstance(values, str):
                return values
            if values.dtype != np.int32 or values.size not in (1, rows) or any(d != 1 for d in values.shape[:-1]):
                return f"{node.op}'s bias of shape {list(values.shape)} is not an int32 row of {rows}"
            if values.shape == (rows,):
                match.q_bias = bias
            else:
                match.q_bias_row = np.broadcast_to(values.reshape(-1), (rows,)).astype(np.int32)
        y_scale = _input(node, y_at)
        if y_scale is None:  # QGemm without y_scale: float output
            match.output = node.outputs[0]
            return match
        scale = _scalar_constant(graph, y_scale, f"{node.op}'s output scale", (np.float32,))
        if isinstance(scale, str):
            return scale
        match.y_scale = _scalar_tensor(graph, y_scale, f"{node.outputs[0].name}_scale_scalar", scale)
        zero_point = _input(node, y_at + 1)
        if zero_point is None:
            return f"{node.op} has no output zero point"
        else:
            zp = _scalar_constant(graph, zero_point, f"{node.op}'s output zero point")
            if isinstance(zp, str):
                return zp
            if zp.dtype not in _ACT_TYPES:
                return f"{node.op}'s output is {zp.dtype}, not uint8 or int8"
            match.y_zero_point = _scalar_tensor(graph, zero_point, f"{node.outputs[0].name}_zero_point_scalar", zp)
        match.output = node.outputs[0]
        return match


class IntegerLayer(QuantRule):
    """``MatMulInteger``/``ConvInteger`` whose int32 output is scaled to float: ``Mul(Cast(.), S)``."""

    def check(self, graph, node, record):
        started = self._start(graph, node, record)
        if isinstance(started, str):
            return started
        match, weight = started
        rows = _rows(weight.shape, weight.layout)
        cast = _only_reader(graph, node.outputs[0])
        if not _is_onnx(cast, "Cast") or int(cast.attrs.get("to", 0)) != onnx.TensorProto.FLOAT:
            return (f"{node.op}'s int32 output is not read by one Cast to float only (the int8 ops give float "
                    "or quantized outputs, not int32)")
        mul = _only_reader(graph, cast.outputs[0])
        if not _is_onnx(mul, "Mul") or len(mul.inputs) != 2:
            return f"the Cast after {node.op} is not read by one Mul only (the scale)"
        s = mul.inputs[1] if mul.inputs[0] is cast.outputs[0] else mul.inputs[0]
        scales = self._scales(graph, s, rows, weight.layout)
        if isinstance(scales, str):
            return scales
        a_scale, w_scale, w_tensor = scales
        why = _quantized_activation(graph, match, node.inputs[0], a_scale, _input(node, 2), node.op)
        if why:
            return why
        _w_scale_tensor(graph, match, w_scale, w_tensor, rows, weight.name)
        match.absorbed += [cast, mul]
        _output_side(graph, match, mul.outputs[0])
        return match

    def _scales(self, graph, s: gs.Tensor, rows: int, layout: str):
        """(the activation scale tensor, the weight scale values, their tensor) of the scale S."""
        fits = (lambda v: v.size == 1 or (v.shape[-1] == rows and v.size == rows)) if layout != "oihw" else \
            (lambda v: v.size == 1 or (v.size == rows and v.ndim >= 3 and v.shape[-3] == rows))
        source, _ = resolve_constant(graph, s)
        if source is not None:  # a constant product: a_scale = 1
            values = constant_array(source.tensor)
            if values.dtype != np.float32 or not fits(values):
                return f"the scale after {self.op} (shape {list(values.shape)}) is not per tensor or per output feature"
            one = (f"{s.name}_one", np.array(1.0, np.float32))
            return one, values.reshape(-1) if values.size > 1 else values.reshape(()), None
        mul = producer(s)
        if not _is_onnx(mul, "Mul") or len(mul.inputs) != 2:
            return f"the scale after {self.op} is neither constant nor the Mul of an activation and a weight scale"
        for w_at in (1, 0):
            w_source, _ = resolve_constant(graph, mul.inputs[w_at])
            if w_source is None:
                continue
            values = constant_array(w_source.tensor)
            if values.dtype != np.float32 or not fits(values):
                continue
            flat = values.reshape(-1) if values.size > 1 else values.reshape(())
            keep = mul.inputs[w_at] if values.ndim <= 1 else None
            return mul.inputs[1 - w_at], flat, keep
        return f"the scale Mul after {self.op} has no constant per-tensor or per-output-feature weight scale"


class QdqMatMul(QdqLayer):
    op = "MatMul"


class QdqGemm(QdqLayer):
    op = "Gemm"


class QdqConv(QdqLayer):
    op = "Conv"


class QLinearMatMul(QLinearLayer):
    op = "QLinearMatMul"


class QLinearConv(QLinearLayer):
    op = "QLinearConv"


class QGemm(QLinearLayer):
    op = "QGemm"


class MatMulInteger(IntegerLayer):
    op = "MatMulInteger"


class ConvInteger(IntegerLayer):
    op = "ConvInteger"


# The int8 rules per form: (record.quant, record.op) -> the rules tried in order.
QUANT_RULES: dict[tuple[str, str], tuple[Rule, ...]] = {
    (QDQ, "MatMul"): (QdqMatMul(),),
    (QDQ, "Gemm"): (QdqGemm(),),
    (QDQ, "Conv"): (QdqConv(),),
    **{(op, op): (cls(),) for op, cls in (("QLinearMatMul", QLinearMatMul), ("QLinearConv", QLinearConv),
                                          ("QGemm", QGemm), ("MatMulInteger", MatMulInteger), ("ConvInteger", ConvInteger))},
}


def rules_for(record: LayerRecord) -> tuple[Rule, ...]:
    return QUANT_RULES.get((record.quant, record.op), ())


def add_quantized_layers(graph: ModelGraph, layers: list[LayerRecord]) -> list[LayerRecord]:
    """The records with every quantized layer described by ``describe``: a QDQ layer's record (which
    discovery refused as "quantized") in place, and a record per QOperator node added in graph order."""
    scopes = graph.scopes()
    by_position = {(record.scope, record.index): record for record in layers if record.visited and record.index is not None}
    out: list[LayerRecord] = []
    for where, scope in scopes.items():
        for index, node in enumerate(scope.nodes()):
            record = by_position.pop((where, index), None)
            form = quant_form(node)
            if form is not None:
                record = describe(scope, node, index, record)
                record.scope = where
            if record is not None:
                out.append(record)
    out += list(by_position.values())
    out += [record for record in layers if not record.visited or record.index is None]
    return out
