"""Python reference implementations of onnxsparse's ops for ``onnx.reference.ReferenceEvaluator``.

Independent of the C++ kernels: the weight is decoded with ``onnxsparse.format.decompress`` and
the product computed in numpy (Conv by ONNX's own reference implementation), in fp32 for every
dtype and rounded once to the output dtype, as DEVELOPERS.md specifies for fp16/bf16.

The int8 ops (``QMatMulCompress``, ``QConv2dCompress``) follow docs/ops.md "int8 ops" exactly:
the sum of ``(A - a_zero_point) * W`` plus the int32 bias accumulates in integers (checked to fit
int32), the float form is ``float32(acc) * fp32(a_scale * w_scale[n])``, the quantized form
``saturate(round_half_to_even(float32(acc) * m[n]) + y_zero_point)`` with
``m[n] = fp32(fp32(a_scale * w_scale[n]) / y_scale)``; Conv pads with ``a_zero_point``. The fp16 form
(``a_scale`` float16) is the float form's value rounded to float16 (to nearest even).

    ReferenceEvaluator(model, new_ops=REFERENCE_OPS).run(None, feeds)
"""

from __future__ import annotations

import numpy as np
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_conv import _conv_implementation

from onnxsparse import format as fmt


def _dense_rows_k(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The [rows, K] matrix (fp32) that the compressed pair encodes."""
    return fmt.decompress(values.astype(np.float32), index)


class CompressOp(OpRun):
    op_domain = "onnxsparse"

    def _run(self, weight, layout=None):
        # Any dtype, int8 included: values keep the weight's dtype.
        values, index = fmt.compress_weight(np.asarray(weight), layout)
        return values, index


class MatMulCompress(OpRun):
    op_domain = "onnxsparse"

    def _run(self, a, values, index, bias=None, alpha=None, transA=None):
        w = _dense_rows_k(values, index).T  # [K, N]
        a32 = a.astype(np.float32)
        if transA:
            if a.ndim != 2:
                raise ValueError(f"MatMulCompress: transA=1 needs a rank-2 A, got {a.shape}")
            a32 = a32.T
        y = np.matmul(a32, w)
        if alpha is not None:
            y = np.float32(alpha) * y
        if bias is not None:
            y = y + bias.astype(np.float32)
        return (y.astype(a.dtype),)


class Conv2dCompress(OpRun):
    op_domain = "onnxsparse"

    def _run(self, x, values, index, b=None, kernel_shape=None, strides=None, pads=None,
             dilations=None, group=None, auto_pad=None, layout=None):
        if layout == "NHWC":  # input [N, H, W, C], output [N, OH, OW, OC]: the same Conv around transposes
            (y,) = self._run(x.transpose(0, 3, 1, 2), values, index, b, kernel_shape, strides, pads, dilations,
                             group, auto_pad)
            return (np.ascontiguousarray(y.transpose(0, 2, 3, 1)),)
        kh, kw = kernel_shape
        rows_k = _dense_rows_k(values, index)
        oc, k = rows_k.shape
        w = fmt.from_rows_k(rows_k, "oihw", (oc, k // (kh * kw), kh, kw))
        y = _conv_implementation(
            x.astype(np.float32),
            w,
            None if b is None else b.astype(np.float32),
            auto_pad or "NOTSET",
            dilations or [1, 1],
            group or 1,
            [kh, kw],
            pads if pads is not None else ([0, 0, 0, 0] if (auto_pad or "NOTSET") == "NOTSET" else None),
            strides or [1, 1],
        )
        return (y.astype(x.dtype),)


def _scalar(x, name: str, op: str):
    """A scalar input given as shape [] or [1] (None stays None)."""
    if x is None:
        return None
    x = np.asarray(x)
    if x.size != 1:
        raise ValueError(f"{op}: {name} must be a scalar, got shape {x.shape}")
    return x.reshape(())


def _int_weight(values: np.ndarray, index: np.ndarray, op: str) -> np.ndarray:
    """The [rows, K] int64 matrix that an int8 compressed pair encodes."""
    if values.dtype != np.int8:
        raise TypeError(f"{op}: values must be int8, got {values.dtype}")
    return fmt.decompress(values, index).astype(np.int64)


def _check_int32(acc: np.ndarray, op: str) -> np.ndarray:
    if acc.size and (acc.min() < np.iinfo(np.int32).min or acc.max() > np.iinfo(np.int32).max):
        raise OverflowError(f"{op}: the int32 accumulator overflows")
    return acc.astype(np.int32)


def _quant_epilogue(acc: np.ndarray, channel_axis: int, a_scale, w_scale, y_scale, y_zero_point,
                    activation: str, op: str) -> np.ndarray:
    """docs/ops.md's epilogue: the int32 accumulator to float32 or to the quantized output."""
    w_scale = np.asarray(w_scale, dtype=np.float32).reshape(-1)
    rows = acc.shape[channel_axis]
    if w_scale.size not in (1, rows):
        raise ValueError(f"{op}: w_scale has {w_scale.size} elements, expected 1 or {rows}")
    bshape = [1] * acc.ndim
    bshape[channel_axis] = -1
    scale = (np.float32(a_scale) * w_scale).astype(np.float32)  # fp32 product, once per channel
    f_acc = acc.astype(np.float32)
    if activation not in ("", "Relu"):
        raise ValueError(f"{op}: unsupported activation {activation!r}")
    if (y_scale is None) != (y_zero_point is None):
        raise ValueError(f"{op}: y_scale and y_zero_point must be both present or both absent")
    if y_scale is None:
        y = (f_acc * scale.reshape(bshape)).astype(np.float32)
        if activation == "Relu":
            y = np.maximum(y, np.float32(0))
        return y.astype(np.float16) if np.asarray(a_scale).dtype == np.float16 else y
    multiplier = (scale / np.float32(y_scale)).astype(np.float32)
    y = (f_acc * multiplier.reshape(bshape)).astype(np.float32)
    if activation == "Relu":
        y = np.maximum(y, np.float32(0))
    info = np.iinfo(y_zero_point.dtype)
    q = np.rint(y).astype(np.float64) + float(y_zero_point)  # rint: round half to even
    return np.clip(q, info.min, info.max).astype(y_zero_point.dtype)


def _check_activation_input(a: np.ndarray, a_zero_point, op: str):
    if a.dtype not in (np.uint8, np.int8):
        raise TypeError(f"{op}: input 0 must be uint8 or int8, got {a.dtype}")
    if a_zero_point is None:
        return np.zeros((), a.dtype)
    if a_zero_point.dtype != a.dtype:
        raise TypeError(f"{op}: a_zero_point is {a_zero_point.dtype}, input 0 is {a.dtype}")
    return a_zero_point


class QMatMulCompress(OpRun):
    op_domain = "onnxsparse"

    def _run(self, a, a_scale, a_zero_point, values, index, w_scale, bias=None, y_scale=None,
             y_zero_point=None, activation=None):
        op = "QMatMulCompress"
        a_scale = _scalar(a_scale, "a_scale", op)
        a_zero_point = _check_activation_input(a, _scalar(a_zero_point, "a_zero_point", op), op)
        y_scale, y_zero_point = _scalar(y_scale, "y_scale", op), _scalar(y_zero_point, "y_zero_point", op)
        w = _int_weight(values, index, op)  # [N, K]
        if a.ndim < 1 or a.shape[-1] != w.shape[1]:
            raise ValueError(f"{op}: A has shape {a.shape}, the weight has K={w.shape[1]}")
        centred = a.astype(np.int64) - int(a_zero_point)
        acc = np.matmul(centred, w.T)  # exact in int64
        if bias is not None:
            acc = acc + np.asarray(bias, dtype=np.int64).reshape(-1)
        acc = _check_int32(acc, op)
        return (_quant_epilogue(acc, acc.ndim - 1, a_scale, w_scale, y_scale, y_zero_point,
                                activation or "", op),)


def _conv_pads(in_hw, kernel, strides, dilations, pads, auto_pad):
    """[top, left, bottom, right] pads as ONNX Conv defines them (auto_pad included)."""
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for size, k, s, d in zip(in_hw, kernel, strides, dilations):
            o = -(-size // s)
            out.append(max(0, (o - 1) * s + (k - 1) * d + 1 - size))
        small = [t // 2 for t in out]
        large = [t - t // 2 for t in out]
        return (small + large) if auto_pad == "SAME_UPPER" else (large + small)
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    return list(pads) if pads is not None else [0, 0, 0, 0]


def _int_conv(x: np.ndarray, w: np.ndarray, strides, dilations, group: int) -> np.ndarray:
    """Integer 2-D convolution of an already padded int64 x [N, C, H, W] by w [OC, C/g, KH, KW]."""
    n, c, h, wd = x.shape
    oc, cg, kh, kw = w.shape
    sh, sw = strides
    dh, dw = dilations
    oh = (h - (kh - 1) * dh - 1) // sh + 1
    ow = (wd - (kw - 1) * dw - 1) // sw + 1
    ocg = oc // group
    y = np.zeros((n, oc, max(oh, 0), max(ow, 0)), dtype=np.int64)
    for g in range(group):
        xg = x[:, g * cg:(g + 1) * cg]
        wg = w[g * ocg:(g + 1) * ocg]
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, :, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]
                y[:, g * ocg:(g + 1) * ocg] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
    return y


class QConv2dCompress(OpRun):
    op_domain = "onnxsparse"

    def _run(self, x, a_scale, a_zero_point, values, index, w_scale, bias=None, y_scale=None,
             y_zero_point=None, kernel_shape=None, strides=None, pads=None, dilations=None,
             group=None, auto_pad=None, activation=None):
        op = "QConv2dCompress"
        a_scale = _scalar(a_scale, "a_scale", op)
        a_zero_point = _check_activation_input(x, _scalar(a_zero_point, "a_zero_point", op), op)
        y_scale, y_zero_point = _scalar(y_scale, "y_scale", op), _scalar(y_zero_point, "y_zero_point", op)
        if x.ndim != 4:
            raise ValueError(f"{op}: X must be [N, C, H, W], got {x.shape}")
        kh, kw = kernel_shape
        group = group or 1
        rows_k = _int_weight(values, index, op)
        oc, k = rows_k.shape
        w = fmt.from_rows_k(rows_k, "oihw", (oc, k // (kh * kw), kh, kw))
        if w.shape[1] * group != x.shape[1]:
            raise ValueError(f"{op}: X has {x.shape[1]} channels, the weight {w.shape[1]} x group {group}")
        strides = list(strides or [1, 1])
        dilations = list(dilations or [1, 1])
        top, left, bottom, right = _conv_pads(x.shape[2:], (kh, kw), strides, dilations, pads,
                                              auto_pad or "NOTSET")
        # Padding reads a_zero_point (the quantized zero), so after centring it is exactly 0.
        centred = np.pad(x.astype(np.int64) - int(a_zero_point), ((0, 0), (0, 0), (top, bottom), (left, right)))
        acc = _int_conv(centred, w, strides, dilations, group)
        if bias is not None:
            acc = acc + np.asarray(bias, dtype=np.int64).reshape(1, -1, 1, 1)
        acc = _check_int32(acc, op)
        return (_quant_epilogue(acc, 1, a_scale, w_scale, y_scale, y_zero_point, activation or "", op),)


REFERENCE_OPS = [CompressOp, MatMulCompress, Conv2dCompress, QMatMulCompress, QConv2dCompress]


def run_reference(model, feeds: dict) -> list[np.ndarray]:
    """Run a model (compiled or not) with the reference evaluator and these ops."""
    return ReferenceEvaluator(model, new_ops=REFERENCE_OPS).run(None, feeds)
