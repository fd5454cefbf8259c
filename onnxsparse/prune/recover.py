"""Recovery after one-shot pruning: a short distillation of the pruned model towards the dense one.

``recover(dense, pruned, masked, fit, steps, lr)`` runs the pruned ONNX graph as a differentiable
torch function (``TorchGraph``: an interpreter of the graph's nodes, computing in float32, so no torch
version of the model is needed), and trains its float weights (Conv/MatMul/Gemm weights and biases,
BatchNormalization scale and offset, and any other float initializer of more than one element, except
BatchNormalization statistics; float16 ones are trained in float32 and written back in float16) with
Adam to make its outputs match the dense model's on the fit part of the calibration data: the loss is the squared relative L2 of the float outputs, the quantity ``--max-error`` bounds;
the learning rate decays to 0 along a cosine. No labels are used. The pruned weights in ``masked``
keep their zeros (the mask is re-applied after every step), so every 2:4 layer stays 2:4. The caller
measures the result on held-out data and keeps it only where it is better (``pruner.prune_model``).

Needs torch (``pip install "onnxsparse[torch]"``). The interpreter covers the operators of
convolutional and MLP classifiers (the list in ``OPS``); a model with another operator is refused
with one line naming it.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import OnnxSparseError

Progress = Callable[[str], None]


def _torch():
    try:
        import torch
    except ImportError as e:  # an optional dependency: one line, no traceback
        raise OnnxSparseError('--recover needs torch: pip install "onnxsparse[torch]"') from e
    return torch


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _pads(pads: list[int] | None, dims: int) -> list[int]:
    return list(pads) if pads else [0] * (2 * dims)


def _auto_pads(x, kernel: list[int], strides: list[int], dilations: list[int], a: dict) -> list[int]:
    """The begin and end pads of each spatial axis: ``pads``, or those ``auto_pad`` implies."""
    dims = len(kernel)
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return [0] * (2 * dims)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        return _pads(a.get("pads"), dims)
    pads = [0] * (2 * dims)
    for d in range(dims):  # the output is ceil(input / stride) along each axis
        size, extent = x.shape[2 + d], (kernel[d] - 1) * dilations[d] + 1
        total = max((-(-size // strides[d]) - 1) * strides[d] + extent - size, 0)
        small, large = total // 2, total - total // 2
        pads[d], pads[d + dims] = (small, large) if auto == "SAME_UPPER" else (large, small)
    return pads


def _pad_explicitly(t, x, pads: list[int], value: float):
    dims = len(pads) // 2
    order = []
    for i in reversed(range(dims)):  # F.pad takes the last axis first
        order += [pads[i], pads[i + dims]]
    return t.nn.functional.pad(x, order, value=value)


def _conv(t, x, w, b, a):
    torch = t
    dims = w.dim() - 2
    strides = a.get("strides", [1] * dims)
    dilations = a.get("dilations", [1] * dims)
    group = a.get("group", 1)
    pads = _auto_pads(x, list(w.shape[2:]), strides, dilations, a)
    if pads[:dims] == pads[dims:]:
        padding = pads[:dims]
    else:  # asymmetric: pad explicitly
        x = _pad_explicitly(torch, x, pads, 0.0)
        padding = [0] * dims
    conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d}.get(dims)
    if conv is None:
        raise OnnxSparseError(f"--recover: a {dims}-D Conv is not supported")
    return conv(x, w, b, stride=strides, padding=padding, dilation=dilations, groups=group)


def _reshape(x, shape):
    dims = [int(d) for d in shape.tolist()]
    dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _slice(t, x, starts, ends, axes=None, steps=None):
    axes = axes.tolist() if axes is not None else list(range(len(starts)))
    steps = steps.tolist() if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts.tolist(), ends.tolist(), axes, steps):
        if st != 1:
            raise OnnxSparseError("--recover: Slice with a step other than 1 is not supported")
        size = x.shape[ax]
        e = max(min(e, size), -size - 1) if e < 0 else min(e, size)
        index[ax] = slice(s, e)
    return x[tuple(index)]


def _pool(t, x, a, kind):
    dims = x.dim() - 2
    f = t.nn.functional
    kernel, strides = a["kernel_shape"], a.get("strides", [1] * dims)
    pads = _auto_pads(x, kernel, strides, a.get("dilations", [1] * dims), a)
    ceil = bool(a.get("ceil_mode", 0))
    include = bool(a.get("count_include_pad", 0))
    if pads[:dims] != pads[dims:]:
        if kind != "MaxPool" and not include:
            raise OnnxSparseError("--recover: AveragePool with asymmetric pads not counted is not supported")
        x = _pad_explicitly(t, x, pads, -math.inf if kind == "MaxPool" else 0.0)
        pads = [0] * (2 * dims)
    if dims != 2:
        raise OnnxSparseError(f"--recover: a {dims}-D {kind} is not supported")
    if kind == "MaxPool":
        return f.max_pool2d(x, kernel, strides, pads[:dims], ceil_mode=ceil)
    return f.avg_pool2d(x, kernel, strides, pads[:dims], ceil_mode=ceil, count_include_pad=include)


def _gemm(x, w, b, a):
    if a.get("transA", 0):
        x = x.transpose(0, 1)
    if a.get("transB", 0):
        w = w.transpose(0, 1)
    y = a.get("alpha", 1.0) * (x @ w)
    return y if b is None else y + a.get("beta", 1.0) * b


# Casts to a floating type compute in float32, the interpreter's one floating type (a float16 model
# is trained in float32 and written back in float16).
_TYPES = {1: "float32", 6: "int32", 7: "int64", 9: "bool", 10: "float32", 11: "float32", 16: "float32"}


def _cast(t, x, to):
    name = _TYPES.get(to)
    if name is None:
        raise OnnxSparseError(f"--recover: Cast to ONNX type {to} is not supported")
    return x.to(getattr(t, name))


# op type -> f(torch, inputs, attributes) -> output (one output per node)
OPS: dict[str, Callable] = {
    "Conv": lambda t, i, a: _conv(t, i[0], i[1], i[2] if len(i) > 2 else None, a),
    "BatchNormalization": lambda t, i, a: t.nn.functional.batch_norm(
        i[0], i[3], i[4], i[1], i[2], training=False, eps=a.get("epsilon", 1e-5)),
    "Relu": lambda t, i, a: t.relu(i[0]),
    "Sigmoid": lambda t, i, a: t.sigmoid(i[0]),
    "Tanh": lambda t, i, a: t.tanh(i[0]),
    "HardSigmoid": lambda t, i, a: t.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0.0, 1.0),
    "HardSwish": lambda t, i, a: i[0] * t.clamp(i[0] / 6.0 + 0.5, 0.0, 1.0),
    "LeakyRelu": lambda t, i, a: t.nn.functional.leaky_relu(i[0], a.get("alpha", 0.01)),
    "Clip": lambda t, i, a: t.clamp(i[0], *(float(v) if v is not None else None for v in
                                           (i[1] if len(i) > 1 else a.get("min"), i[2] if len(i) > 2 else a.get("max")))),
    "Add": lambda t, i, a: i[0] + i[1],
    "Sub": lambda t, i, a: i[0] - i[1],
    "Mul": lambda t, i, a: i[0] * i[1],
    "Div": lambda t, i, a: i[0] / i[1],
    "MatMul": lambda t, i, a: t.matmul(i[0], i[1]),
    "Gemm": lambda t, i, a: _gemm(i[0], i[1], i[2] if len(i) > 2 else None, a),
    "GlobalAveragePool": lambda t, i, a: i[0].mean(dim=tuple(range(2, i[0].dim())), keepdim=True),
    "MaxPool": lambda t, i, a: _pool(t, i[0], a, "MaxPool"),
    "AveragePool": lambda t, i, a: _pool(t, i[0], a, "AveragePool"),
    "Reshape": lambda t, i, a: _reshape(i[0], i[1]),
    "Flatten": lambda t, i, a: i[0].reshape(int(np.prod(i[0].shape[:a.get("axis", 1)])), -1),
    "Transpose": lambda t, i, a: i[0].permute(*(a.get("perm") or reversed(range(i[0].dim())))),
    "Concat": lambda t, i, a: t.cat(list(i), dim=a["axis"]),
    "Slice": lambda t, i, a: _slice(t, i[0], *i[1:]),
    "Shape": lambda t, i, a: t.tensor(list(i[0].shape), dtype=t.int64),
    "Cast": lambda t, i, a: _cast(t, i[0], a["to"]),
    "Identity": lambda t, i, a: i[0],
    "Softmax": lambda t, i, a: t.softmax(i[0], dim=a.get("axis", -1)),
    "Squeeze": lambda t, i, a: _squeeze(i[0], i[1].tolist() if len(i) > 1 else a.get("axes")),
    "Unsqueeze": lambda t, i, a: _unsqueeze(i[0], i[1].tolist() if len(i) > 1 else a["axes"]),
    "ReduceMean": lambda t, i, a: _reduce(t, i, a, "mean"),
    "ReduceSum": lambda t, i, a: _reduce(t, i, a, "sum"),
    "ReduceMax": lambda t, i, a: _reduce(t, i, a, "amax"),
    "GlobalMaxPool": lambda t, i, a: i[0].amax(dim=tuple(range(2, i[0].dim())), keepdim=True),
    "Erf": lambda t, i, a: t.erf(i[0]),
    "Sqrt": lambda t, i, a: t.sqrt(i[0]),
    "Exp": lambda t, i, a: t.exp(i[0]),
    "Log": lambda t, i, a: t.log(i[0]),
    "Neg": lambda t, i, a: -i[0],
    "Abs": lambda t, i, a: t.abs(i[0]),
    "Reciprocal": lambda t, i, a: t.reciprocal(i[0]),
    "Pow": lambda t, i, a: t.pow(i[0], i[1]),
    "Max": lambda t, i, a: _fold(t.maximum, i),
    "Min": lambda t, i, a: _fold(t.minimum, i),
    "Equal": lambda t, i, a: t.eq(i[0], i[1]),
    "Where": lambda t, i, a: t.where(i[0], i[1], i[2]),
    "Expand": lambda t, i, a: i[0] * t.ones([int(d) for d in i[1].tolist()], dtype=i[0].dtype),
    "Gelu": lambda t, i, a: t.nn.functional.gelu(i[0], approximate="tanh" if a.get("approximate", b"none") in
                                                 (b"tanh", "tanh") else "none"),
    "LayerNormalization": lambda t, i, a: _layer_norm(t, i, a),
}


def _reduce(t, i, a, how):
    axes = i[1].tolist() if len(i) > 1 and i[1] is not None else a.get("axes")
    keep = bool(a.get("keepdims", 1))
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return i[0]
        axes = list(range(i[0].dim()))
    return getattr(i[0], how)(dim=tuple(axes), keepdim=keep)


def _fold(f, inputs):
    out = inputs[0]
    for x in inputs[1:]:
        out = f(out, x)
    return out


def _layer_norm(t, i, a):
    axis = a.get("axis", -1) % i[0].dim()
    shape = i[0].shape[axis:]
    return t.nn.functional.layer_norm(i[0], shape, i[1].expand(shape) if i[1].dim() else None,
                                      i[2].expand(shape) if len(i) > 2 and i[2] is not None else None,
                                      eps=a.get("epsilon", 1e-5))


def _squeeze(x, axes):
    """ONNX's Squeeze: the given axes, or without them every axis of size 1."""
    if axes is None:
        return x.squeeze()
    drop = {ax % x.dim() for ax in axes}
    return x.reshape([d for k, d in enumerate(x.shape) if k not in drop])


def _unsqueeze(x, axes):
    rank = x.dim() + len(axes)
    for ax in sorted(a % rank for a in axes):
        x = x.unsqueeze(ax)
    return x


# BatchNormalization's statistics are not trained (a variance must stay positive).
_FROZEN_INPUTS = {"BatchNormalization": (3, 4)}


class TorchGraph:
    """The graph of an ONNX model as a torch function of its inputs; ``params`` are its trainable
    float initializers (``torch.nn.Parameter``), every other initializer and Constant a tensor."""

    def __init__(self, model: onnx.ModelProto):
        t = _torch()
        graph = model.graph
        if any(a.type == onnx.AttributeProto.GRAPH for n in graph.node for a in n.attribute):
            raise OnnxSparseError("--recover: models with If/Loop/Scan subgraphs are not supported")
        unknown = sorted({n.op_type for n in graph.node if n.op_type not in OPS and n.op_type != "Constant"
                          or n.domain not in ("", "ai.onnx")})
        if unknown:
            raise OnnxSparseError(f"--recover: the model has operators the recovery cannot run: {', '.join(unknown)}")
        frozen = {n.input[k] for n in graph.node for k in _FROZEN_INPUTS.get(n.op_type, ()) if k < len(n.input)}
        self.torch = t
        self.nodes = [n for n in graph.node if n.op_type != "Constant"]
        self.attrs = [_attrs(n) for n in self.nodes]
        self.values: dict[str, object] = {}
        self.params: dict[str, object] = {}
        constants = [(init.name, init) for init in graph.initializer]
        constants += [(n.output[0], _attrs_tensor(n)) for n in graph.node if n.op_type == "Constant"]
        self.dtypes: dict[str, np.dtype] = {}  # a trained weight's own type, written back in it
        for name, tensor in constants:  # weights live in either (exporters differ)
            array = numpy_helper.to_array(tensor)
            if tensor.data_type == onnx.TensorProto.BFLOAT16:
                raise OnnxSparseError("--recover: bfloat16 weights are not supported (float32 and float16 are)")
            if array.dtype in (np.float16, np.float64):
                array = array.astype(np.float32)
            if array.dtype == np.float32 and array.size > 1 and name not in frozen:
                self.params[name] = t.nn.Parameter(t.from_numpy(array.copy()))
                self.dtypes[name] = numpy_helper.to_array(tensor).dtype
            else:
                self.values[name] = t.from_numpy(np.array(array))
        self.inputs = [i.name for i in graph.input if i.name not in self.values and i.name not in self.params]
        self.outputs = [o.name for o in graph.output]

    def __call__(self, feeds: dict[str, np.ndarray]) -> list:
        t = self.torch
        env = dict(self.values)
        env.update(self.params)
        for name in self.inputs:
            x = np.asarray(feeds[name])
            env[name] = t.from_numpy(x.astype(np.float32) if x.dtype in (np.float16, np.float64) else x)
        for node, a in zip(self.nodes, self.attrs):
            args = [env[name] if name else None for name in node.input]
            env[node.output[0]] = OPS[node.op_type](t, args, a)
        return [env[name] for name in self.outputs]


def _attrs_tensor(node: onnx.NodeProto) -> onnx.TensorProto:
    for a in node.attribute:
        if a.name == "value":
            return a.t
    raise OnnxSparseError(f"--recover: Constant {node.name!r} without a tensor value is not supported")


def recover(dense: onnx.ModelProto, pruned: onnx.ModelProto, masked: Iterable[str], fit: Iterable[dict],
            steps: int, lr: float = 1e-3, say: Progress | None = None) -> onnx.ModelProto:
    """``pruned`` with its float weights trained ``steps`` Adam steps (one fit batch each, the batches
    cycled) towards ``dense``'s outputs; the weights named in ``masked`` keep their zeros."""
    import onnxruntime as ort

    t = _torch()
    say = say or (lambda message: None)
    batches = list(fit)
    if not batches:
        raise OnnxSparseError("--recover needs calibration data to fit on")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    teacher = ort.InferenceSession(dense.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in teacher.get_outputs()]
    fitted = [i for i, o in enumerate(teacher.get_outputs()) if o.type in ("tensor(float)", "tensor(float16)",
                                                                          "tensor(double)", "tensor(bfloat16)")]
    if not fitted:
        raise OnnxSparseError("--recover fits the model's float outputs; this model has none")
    targets = [[t.from_numpy(np.asarray(ys[i], np.float32)) for i in fitted]
               for ys in (teacher.run(names, b) for b in batches)]
    student = TorchGraph(pruned)
    if not student.params:
        raise OnnxSparseError("--recover trains float weights; this model has none")
    keep_zeros = set(masked)
    masks = {name: (p.detach() != 0).to(p.dtype) for name, p in student.params.items() if name in keep_zeros}
    optimizer = t.optim.Adam(list(student.params.values()), lr=lr)
    # cosine decay to 0: the last steps settle instead of jumping between batches
    schedule = t.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / steps)))
    t.manual_seed(0)
    first = last = math.nan
    for step in range(steps):
        k = step % len(batches)
        outs = student(batches[k])
        loss = sum(((outs[i].float() - y) ** 2).sum() / (y ** 2).sum().clamp_min(1e-30)
                   for i, y in zip(fitted, targets[k]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        with t.no_grad():
            for name, mask in masks.items():
                student.params[name].mul_(mask)
        value = float(loss.detach())
        if not math.isfinite(value):  # diverged: the caller's held-out check refuses what is left
            say(f"recover: the fit loss became {value} at step {step + 1} (a smaller --recover-lr may help)")
            last = value
            break
        first = value if step == 0 else first
        last = value
        if (step + 1) % max(1, steps // 5) == 0:
            say(f"recover: step {step + 1}/{steps}, fit loss (squared relative L2) {value:.3g}")
    out = onnx.ModelProto()
    out.CopyFrom(pruned)
    trained = {name: p.detach().numpy().astype(student.dtypes[name]) for name, p in student.params.items()}
    for init in out.graph.initializer:
        if init.name in trained:
            init.CopyFrom(numpy_helper.from_array(trained[init.name], init.name))
    for node in out.graph.node:
        if node.op_type == "Constant" and node.output[0] in trained:
            _attrs_tensor(node).CopyFrom(numpy_helper.from_array(trained[node.output[0]], _attrs_tensor(node).name))
    say(f"recover: {steps} steps, fit loss {first:.3g} -> {last:.3g}")
    return out
