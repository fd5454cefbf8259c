"""Zero-padding a Conv's input channels to a multiple of 4 (``--pad-channels``): an opt-in, exact extension.

SPEC makes a Conv whose C/group is not a multiple of 4 ineligible (its 2:4 groups run along C). For a
2-D Conv with ``group == 1`` (a squeeze-excitation expand conv reading C = 50 channels, an RGB stem
reading 3) appending zero input channels changes nothing: the padded channels of X are zero, and so
are the padded input channels of W, so every output is the same sum. With C4 = C rounded up to a
multiple of 4 (of M for the pruner), the last group of each (oc, kh, kw) holds the r = C mod 4 real
channels and 4 - r zeros: it is 2:4 when those r channels hold at most 2 non-zeros.

This module is the one place that knows it; discovery, the check, the rewrite and the pruner use it:
- ``layers.find_layers(..., pad_channels=True)`` sets ``LayerRecord.padded_channels`` = C4 on the
  Convs ``pad_target`` accepts (2-D, group 1, C not a multiple); others keep SPEC's reason, and
  ``refusal`` says why padding did not apply (group > 1, a 1-D Conv).
- the check (``eligibility``) judges 2:4 on ``pad_weight(W, C4)``.
- the pruner pads the weight (``pad_weight``) and its input statistics (``pad_hessian``: zero
  features at the padded positions), runs the method, and strips the padding (``strip_weight``): the
  written weight keeps its shape and its trailing groups hold at most N non-zeros.
- the rewrite: ``Conv(X, W, B?)`` -> ``Conv2dCompress(Pad(X, pads=[0, 0, 0, 0, 0, C4 - C, 0, 0]),
  CompressOp(pad_weight(W, C4)), B?)`` (``pad_input``: constant 0, in the model opset's form of Pad).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .. import format as fmt
from .graph import make_constant

# ONNX Runtime's CPU Pad takes bfloat16 from opset 21 on.
BFLOAT16_PAD_OPSET = 21


def padded_channels(channels: int, multiple: int = fmt.GROUP) -> int:
    """``channels`` rounded up to a multiple of ``multiple``."""
    return -(-channels // multiple) * multiple


def pad_target(op: str, shape: tuple[int, ...], attrs: dict, multiple: int = fmt.GROUP) -> int | None:
    """C4 for a layer whose weight padding makes eligible (a 2-D Conv, group 1, C not a multiple of
    ``multiple``), else None."""
    if op != "Conv" or len(shape) != 4 or int(attrs.get("group", 1)) != 1 or shape[1] % multiple == 0:
        return None
    return padded_channels(shape[1], multiple)


def refusal(op: str, shape: tuple[int, ...], attrs: dict) -> str:
    """Why ``--pad-channels`` does not pad a Conv whose C/group is not a multiple: a sentence."""
    group = int(attrs.get("group", 1))
    if group != 1:
        return "--pad-channels pads only Convs with group = 1"
    if op != "Conv" or len(shape) != 4:
        return "--pad-channels pads only 2-D Convs"
    return "--pad-channels does not apply"


def describe(channels: int, padded: int) -> str:
    """The phrase the reports use: "after zero-padding C from 50 to 52"."""
    return f"after zero-padding C from {channels} to {padded}"


def pad_weight(weight: np.ndarray, padded: int) -> np.ndarray:
    """An OIHW weight ``[OC, C, KH, KW]`` with zero input channels appended up to ``padded``."""
    extra = padded - weight.shape[1]
    if extra <= 0:
        return weight
    widths = [(0, 0)] * weight.ndim
    widths[1] = (0, extra)
    return np.pad(weight, widths)


def strip_weight(weight: np.ndarray, channels: int) -> np.ndarray:
    """The padded weight's first ``channels`` input channels: the weight in its own shape."""
    return np.ascontiguousarray(weight[:, :channels])


def feature_positions(kernel_positions: int, channels: int, padded: int) -> np.ndarray:
    """Where each real feature (kh, kw, c) of K = KH*KW*C sits among the padded KH*KW*C4."""
    return (np.arange(kernel_positions)[:, None] * padded + np.arange(channels)[None, :]).reshape(-1)


def pad_hessian(hessian: np.ndarray, kernel_positions: int, channels: int, padded: int) -> np.ndarray:
    """Input statistics ``[..., K, K]`` (K = KH*KW*C in (kh, kw, c) order) as those of the padded input:
    zero rows and columns at the padded features (they are always 0)."""
    k = kernel_positions * padded
    where = feature_positions(kernel_positions, channels, padded)
    out = np.zeros((*hessian.shape[:-2], k, k), hessian.dtype)
    out[..., where[:, None], where[None, :]] = hessian
    return out


def pad_input(graph, node: gs.Node, x: gs.Tensor, channels: int, padded: int) -> gs.Tensor:
    """``Pad(X)`` with ``padded - channels`` zero channels appended on axis 1 of ``[N, C, H, W]``, added
    before ``node``; returns the padded tensor. The form follows the model's ONNX opset: pads an
    input from opset 11, attributes before (``paddings`` in opset 1)."""
    base = node.name or node.outputs[0].name
    pads = [0, 0, 0, 0, 0, padded - channels, 0, 0]
    shared = _existing_pad(x, pads)
    if shared is not None:  # another padded Conv reads the same X: one Pad serves both
        graph.move_before(shared, node)  # it must come before this reader too (X is defined before both)
        return shared.outputs[0]
    shape = None
    if x.shape is not None and len(x.shape) == 4:
        shape = [x.shape[0], padded, x.shape[2], x.shape[3]]
    y = gs.Variable(graph.unique_name(f"{x.name}_c{padded}"), dtype=x.dtype, shape=shape)
    name = graph.unique_name(f"{base}_pad_channels")
    opset = graph.onnx_opset()
    if opset >= 11:
        pads_tensor = make_constant(graph.unique_name(f"{base}_channel_pads"), np.array(pads, np.int64))
        pad = gs.Node("Pad", name=name, inputs=[x, pads_tensor], outputs=[y])
    elif opset >= 2:
        pad = gs.Node("Pad", name=name, attrs={"mode": "constant", "pads": pads, "value": 0.0}, inputs=[x], outputs=[y])
    else:
        pad = gs.Node("Pad", name=name, attrs={"mode": "constant", "paddings": pads, "value": 0.0}, inputs=[x],
                      outputs=[y])
    graph.add_node(pad, before=node)
    return y


def _pad_amounts(pad: gs.Node) -> list[int] | None:
    """The pads of a Pad node this module wrote (an input from opset 11, attributes before)."""
    if len(pad.inputs) >= 2 and isinstance(pad.inputs[1], gs.Constant):
        return [int(v) for v in np.asarray(pad.inputs[1].values).ravel()]
    return pad.attrs.get("pads", pad.attrs.get("paddings"))


def _existing_pad(x: gs.Tensor, pads: list[int]) -> gs.Node | None:
    """The channel Pad of ``x`` that an earlier rewrite added with the same ``pads``, if any."""
    for reader in x.outputs:
        if (reader.op == "Pad" and (reader.name or "").endswith("_pad_channels")
                and reader.attrs.get("mode", "constant") == "constant" and _pad_amounts(reader) == list(pads)):
            return reader
    return None
