"""N:M pruning of a ``[rows, K]`` weight matrix (SPEC's view: groups of M along K, per row).

- ``magnitude``: keep the N largest |w| of each group.
- ``wanda``: keep the N largest |w_rk| * ||X_k||_2 of each group, ||X_k|| the L2 norm of input
  feature k over the calibration data (Sun et al., 2023: per output row, N:M along K).
- ``sparsegpt``: one-shot OBS reconstruction (Frantar & Alistarh, 2023). With H = X^T X + λI
  (λ = ``damp`` * mean(diag H)) and U the upper Cholesky factor of H^-1, columns are visited left
  to right in blocks of ``block_size``; at the first column of each group of M, the group's mask
  keeps the N columns with the largest w^2 / U_jj^2, and after each column j is quantised to its
  mask the error e = (w_j - q_j) / U_jj is spread over the remaining columns: W[:, j:] -= e U[j, j:].

``H`` is always float64; weights are computed in float64 and cast back by the caller.
``prune_layer`` prunes one layer's weight (per Conv group) with a method and reports what it cost;
a Conv with ``padded_channels`` (``--pad-channels``) is pruned on its zero-padded weight and statistics.
SparseGPT and the layer error's quadratic forms run on torch when installed (``linalg``; CPU or
CUDA by ``device``), in numpy otherwise; under ``auto`` a small layer (fewer than
``TORCH_MIN_ELEMENTS`` weights) stays in numpy, where a column step costs less overhead.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..compiler import channel_padding
from ..errors import OnnxSparseError
from ..format import NotTwoFourError, from_rows_k, keep_top, prune_magnitude, reduction_length, to_rows_k
from .capture import Statistics
from .layers import Layer
from .linalg import quadratic_forms, quadratic_forms_blocks, resolve_device, sparsegpt_layer_torch, sparsegpt_torch

METHODS = ("magnitude", "wanda", "sparsegpt")
TORCH_MIN_ELEMENTS = 1 << 20


def magnitude(weight: np.ndarray, n: int, m: int) -> np.ndarray:
    return prune_magnitude(weight, n, m)


def wanda(weight: np.ndarray, hessian: np.ndarray, n: int, m: int) -> np.ndarray:
    norms = np.sqrt(np.maximum(np.diag(hessian), 0.0))
    return np.where(keep_top(np.abs(weight) * norms[None, :], n, m), weight, 0.0)


def _inverse_cholesky_upper(hessian: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor U of (H + λI)^-1 (H^-1 = U^T U), raising λ until H is positive definite."""
    h = hessian.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0  # inputs that never fire: no information, keep H invertible
    mean_diag = float(np.mean(np.diag(h)))
    eye = np.eye(h.shape[0])
    for attempt in range(6):
        try:
            lower = np.linalg.cholesky(h + (damp * 10**attempt) * mean_diag * eye)
            lower_inv = np.linalg.inv(lower)
            return np.linalg.cholesky(lower_inv.T @ lower_inv).T
        except np.linalg.LinAlgError:
            continue
    raise OnnxSparseError("SparseGPT: the layer's input Hessian is not positive definite even with damping")


def sparsegpt(weight: np.ndarray, hessian: np.ndarray, n: int, m: int, block_size: int = 128, damp: float = 0.01) -> np.ndarray:
    w = weight.astype(np.float64, copy=True)
    rows, k = w.shape
    hinv = _inverse_cholesky_upper(hessian, damp)
    block_size = max(m, block_size - block_size % m)
    for start in range(0, k, block_size):
        stop = min(start + block_size, k)
        w1 = w[:, start:stop].copy()
        q1 = np.zeros_like(w1)
        err1 = np.zeros_like(w1)
        hinv1 = hinv[start:stop, start:stop]
        mask1 = np.zeros(w1.shape, dtype=bool)  # True = pruned
        for i in range(stop - start):
            if i % m == 0:
                scores = w1[:, i : i + m] ** 2 / np.diag(hinv1)[i : i + m][None, :] ** 2
                mask1[:, i : i + m] = ~keep_top(scores, n, m)
            column = w1[:, i]
            quantised = np.where(mask1[:, i], 0.0, column)
            q1[:, i] = quantised
            err = (column - quantised) / hinv1[i, i]
            w1[:, i:] -= np.outer(err, hinv1[i, i:])
            err1[:, i] = err
        w[:, start:stop] = q1
        w[:, stop:] -= err1 @ hinv[start:stop, stop:]
    return w


def prune_matrix(method: str, weight: np.ndarray, hessian: np.ndarray | None, n: int, m: int,
                 block_size: int = 128, damp: float = 0.01, backend: str = "numpy") -> np.ndarray:
    """Prune a float64 ``[rows, K]`` matrix to n:m along K with the named method (``backend``:
    ``numpy``, or torch's ``cpu``/``cuda`` for SparseGPT)."""
    if method == "magnitude":
        return magnitude(weight, n, m)
    if hessian is None:
        raise ValueError(f"{method} needs the layer's input statistics")
    if method == "wanda":
        return wanda(weight, hessian, n, m)
    if method == "sparsegpt":
        if backend != "numpy":
            return sparsegpt_torch(weight, hessian, n, m, block_size, damp, backend)
        return sparsegpt(weight, hessian, n, m, block_size, damp)
    raise OnnxSparseError(f"unknown pruning method {method!r} (choose from {', '.join(METHODS)})")


@dataclass
class LayerResult:
    name: str
    op_type: str
    weight: str
    shape: tuple[int, ...]
    params: int
    method: str
    retained: float  # share of the dense weight's total |w| kept
    layer_error: float | None  # relative output error of the layer on its calibration inputs
    compliant: float  # share of groups with at most N non-zeros (1.0 after pruning)

    def to_json(self) -> dict:
        return {
            "name": self.name, "op_type": self.op_type, "weight": self.weight, "shape": list(self.shape),
            "params": self.params, "method": self.method, "retained_magnitude": self.retained,
            "layer_error": self.layer_error, "compliant_groups": self.compliant,
        }


def prune_layer(layer: Layer, weight: np.ndarray, stats: Statistics | None, options) -> tuple[np.ndarray, LayerResult]:
    """The pruned weight (ONNX layout, the weight's dtype) and what it cost."""
    if layer.padded_channels:
        return _prune_padded(layer, weight, stats, options)
    if options.method in ("magnitude", "wanda"):
        return _prune_layer_blocks(layer, weight, stats, options)
    rows_k = to_rows_k(weight, layout=layer.layout)
    per_group = rows_k.shape[0] // layer.groups
    backend = layer_backend(getattr(options, "device", "auto"), per_group * rows_k.shape[1])
    if options.method == "sparsegpt" and backend != "numpy" and stats is not None:
        # torch: float32 throughout, H made from the captured sum a block at a time (no float64 copies)
        pruned = np.empty(rows_k.shape, np.float32)
        num = den = 0.0
        for g in range(layer.groups):
            rows = slice(g * per_group, (g + 1) * per_group)
            pruned[rows], (energy, total) = sparsegpt_layer_torch(
                rows_k[rows], stats.hessian[g], stats.rows, options.n, options.m, options.block_size, options.damp,
                backend)
            num += energy
            den += total
    else:
        dense = rows_k.astype(np.float64)
        pruned = np.empty_like(dense)
        hessians = stats.mean() if stats is not None else None
        num = den = 0.0
        for g in range(layer.groups):
            rows = slice(g * per_group, (g + 1) * per_group)
            hessian = hessians[g] if hessians is not None else None
            pruned[rows] = prune_matrix(options.method, dense[rows], hessian, options.n, options.m,
                                        options.block_size, options.damp, backend)
            if hessian is not None:
                energy, total = quadratic_forms(pruned[rows], dense[rows], hessian, backend)
                num += energy
                den += total
        del dense, hessians
    del rows_k
    out = from_rows_k(pruned, layer.layout, layer.shape).astype(weight.dtype, copy=False)
    del pruned
    kept = total = 0.0
    for (block, _), (source, _) in zip(_row_blocks(out, layer), _row_blocks(weight, layer)):
        kept += float(np.abs(block.astype(np.float64)).sum())
        total += float(np.abs(source.astype(np.float64)).sum())
    result = LayerResult(
        name=layer.name, op_type=layer.op_type, weight=layer.weight, shape=layer.shape, params=layer.params,
        method=options.method, retained=kept / total if total else 1.0,
        layer_error=(float(np.sqrt(max(num, 0.0) / den)) if den > 0 else 0.0) if stats is not None else None,
        compliant=_compliant_share(out, layer, options.n, options.m),
    )
    return out, result


def _prune_padded(layer: Layer, weight: np.ndarray, stats: Statistics | None, options):
    """A Conv pruned as the Conv on its input channels zero-padded to ``layer.padded_channels``
    (``channel_padding``): the padded weight and input statistics through the method, then the padding
    stripped. The padded zeros count among each trailing group's pruned elements, so its real
    channels keep at most N non-zeros; the result reports the weight's own shape."""
    channels, padded = layer.shape[1], layer.padded_channels
    wide = replace(layer, shape=(layer.shape[0], padded, *layer.shape[2:]), padded_channels=None)
    wide_stats = None
    if stats is not None:
        positions = int(np.prod(layer.shape[2:]))
        wide_stats = Statistics(channel_padding.pad_hessian(stats.hessian, positions, channels, padded), stats.rows)
    out, result = prune_layer(wide, channel_padding.pad_weight(weight, padded), wide_stats, options)
    result.shape, result.params = layer.shape, layer.params
    return channel_padding.strip_weight(out, channels), result


# Magnitude and Wanda score each element on its own: a weight is pruned a block of groups at a time,
# its temporaries (scores, ranks, mask) bounded by this many elements whatever the weight's size.
BLOCK_ELEMENTS = 1 << 20


def _group_blocks(weight: np.ndarray, layer: Layer, m: int):
    """(group of a Conv, block of ``weight`` viewed as [a, M, b] or [a, b, M], its group axis, K positions
    of its elements broadcastable to it, writer of the pruned block): every group of M along K once.

    A ``kn`` weight's groups are M consecutive rows of W: blocks of whole rows, in place. ``nk``: rows of
    W (groups along them). ``oihw``: rows of the ``[OC, KH*KW*C]`` matrix, reordered a block at a time."""
    shape = weight.shape
    if layer.layout == "kn":
        k, cols = shape
        step = max(1, BLOCK_ELEMENTS // (m * cols))
        positions = np.arange(k).reshape(k // m, m, 1)
        for start in range(0, k // m, step):
            stop = min(start + step, k // m)
            block = weight[start * m:stop * m].reshape(stop - start, m, cols)

            def put(out, values, start=start, stop=stop):
                out[start * m:stop * m] = values.reshape((stop - start) * m, cols)

            yield 0, block, 1, positions[start:stop], put
        return
    rows = shape[0]
    k = int(np.prod(shape[1:]))
    per_group = rows // layer.groups
    step = max(1, BLOCK_ELEMENTS // k)
    positions = np.arange(k).reshape(1, k // m, m)
    for g in range(layer.groups):
        for start in range(g * per_group, (g + 1) * per_group, step):
            stop = min(start + step, (g + 1) * per_group)
            if layer.layout == "nk":
                block = weight[start:stop].reshape(stop - start, k // m, m)

                def put(out, values, start=start, stop=stop):
                    out[start:stop] = values.reshape(stop - start, k)
            else:  # oihw: [b, C, KH, KW] -> [b, KH, KW, C] -> [b, K]
                block = np.ascontiguousarray(weight[start:stop].transpose(0, 2, 3, 1)).reshape(stop - start, k // m, m)

                def put(out, values, start=start, stop=stop):
                    b, c, kh, kw = stop - start, shape[1], shape[2], shape[3]
                    out[start:stop] = values.reshape(b, kh, kw, c).transpose(0, 3, 1, 2)

            yield g, block, 2, positions, put


def _row_blocks(weight: np.ndarray, layer: Layer, rows_per_block: int | None = None):
    """(rows of ``to_rows_k(weight)``, their slice): the ``[rows, K]`` matrix a block of rows at a time."""
    rows = weight.shape[1] if layer.layout == "kn" else weight.shape[0]
    k = reduction_length(weight.shape, layer.layout)
    step = rows_per_block or max(1, BLOCK_ELEMENTS // max(k, 1))
    for start in range(0, rows, step):
        stop = min(start + step, rows)
        if layer.layout == "kn":
            yield np.ascontiguousarray(weight[:, start:stop].T), slice(start, stop)
        elif layer.layout == "nk":
            yield weight[start:stop], slice(start, stop)
        else:
            yield np.ascontiguousarray(weight[start:stop].transpose(0, 2, 3, 1)).reshape(stop - start, k), \
                slice(start, stop)


def keep_mask(scores: np.ndarray, n: int, axis: int) -> np.ndarray:
    """``format.keep_top`` along ``axis`` (the M elements of each group) without sorting: an element is
    kept when fewer than n of its group rank above it (a higher score, or an equal one earlier in the
    group). For scores that are >= 0 or NaN (|w|, |w| * ||X_k||): NaN ranks below every number, earlier
    NaNs above later ones, as ``argsort`` of the negated scores orders them."""
    if np.isnan(scores).any():
        scores = np.where(np.isnan(scores), -np.inf, scores)  # -inf is free: no score is negative
    s = np.moveaxis(scores, axis, 0)
    m = s.shape[0]
    above = np.zeros(s.shape, dtype=np.uint8 if m < 256 else np.int32)
    for i in range(m):
        for j in range(i + 1, m):
            later_higher = s[j] > s[i]
            above[i] += later_higher
            above[j] += ~later_higher
    return np.moveaxis(above < n, 0, axis)


def _prune_layer_blocks(layer: Layer, weight: np.ndarray, stats: Statistics | None, options):
    """Magnitude or Wanda, a block of groups at a time: the weights ``prune_matrix`` gives (the same
    masks, the kept values' bytes) with temporaries of ``BLOCK_ELEMENTS`` and no float64 copy of the
    weight; the layer error over blocks of rows. |w| is compared in float32 for weights of 32 bits or
    fewer (exact, so the order is float64's); Wanda's |w| * ||X_k|| in float64 as ``wanda``."""
    n, m = options.n, options.m
    if reduction_length(layer.shape, layer.layout) % m:
        raise NotTwoFourError(f"K={reduction_length(layer.shape, layer.layout)} is not a multiple of {m}")
    wanted = options.method == "wanda"
    if wanted and stats is None:
        raise ValueError("wanda needs the layer's input statistics")
    hessians = stats.mean() if stats is not None else None
    norms = [np.sqrt(np.maximum(np.diag(h), 0.0)) for h in hessians] if hessians is not None else None
    exact = np.float32 if weight.dtype.itemsize <= 4 else np.float64
    zero = np.zeros((), weight.dtype)
    out = np.empty(weight.shape, weight.dtype)
    kept = total = 0.0
    groups = compliant = 0
    for g, block, axis, positions, put in _group_blocks(weight, layer, m):
        magnitudes = np.abs(block.astype(exact))
        total += float(magnitudes.sum(dtype=np.float64))
        with np.errstate(invalid="ignore"):  # inf * 0 (an input that never fires) is NaN, as in ``wanda``
            scores = magnitudes.astype(np.float64) * norms[g][positions] if wanted else magnitudes
        keep = keep_mask(scores, n, axis)
        put(out, np.where(keep, block, zero))
        kept += float(np.where(keep, magnitudes, 0).sum(dtype=np.float64))
        counts = np.count_nonzero(keep & (magnitudes != 0), axis=axis)  # the output's non-zeros per group
        groups += counts.size
        compliant += int(np.count_nonzero(counts <= n))
    num = den = 0.0
    if hessians is not None:
        backend = layer_backend(getattr(options, "device", "auto"), out.size // layer.groups)
        per_group = (out.shape[1] if layer.layout == "kn" else out.shape[0]) // layer.groups
        for g in range(layer.groups):
            def pairs(g=g):
                rows = slice(g * per_group, (g + 1) * per_group)
                for (p, _), (d, _) in zip(_row_blocks(_rows_of(out, layer, rows), layer),
                                          _row_blocks(_rows_of(weight, layer, rows), layer)):
                    yield p.astype(np.float64), d.astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf weights give a NaN error
                energy, energy_total = quadratic_forms_blocks(pairs(), hessians[g], backend)
            num += energy
            den += energy_total
    result = LayerResult(
        name=layer.name, op_type=layer.op_type, weight=layer.weight, shape=layer.shape, params=layer.params,
        method=options.method, retained=kept / total if total else 1.0,
        layer_error=(float(np.sqrt(max(num, 0.0) / den)) if den > 0 else 0.0) if stats is not None else None,
        compliant=compliant / groups if groups else 1.0,
    )
    return out, result


def _rows_of(weight: np.ndarray, layer: Layer, rows: slice) -> np.ndarray:
    """The weight restricted to some rows of its ``[rows, K]`` matrix (a view, same layout)."""
    return weight[:, rows] if layer.layout == "kn" else weight[rows]


def _compliant_share(weight: np.ndarray, layer: Layer, n: int, m: int) -> float:
    """Share of groups of M along K with at most N non-zeros (-0.0 is zero), counted a block at a time."""
    groups = compliant = 0
    for _, block, axis, _, _ in _group_blocks(weight, layer, m):
        if block.dtype.itemsize == 2:  # float16, bfloat16: by their bits, without a float conversion
            block = block.view(np.uint16) & np.uint16(0x7FFF)
        counts = np.count_nonzero(block != 0, axis=axis)
        groups += counts.size
        compliant += int(np.count_nonzero(counts <= n))
    return compliant / groups if groups else 1.0


def layer_backend(device: str, elements: int) -> str:
    """numpy, or torch on ``cpu``/``cuda``, for a layer of ``elements`` weights (per Conv group)."""
    backend = resolve_device(device)
    if device == "auto" and backend == "cpu" and elements < TORCH_MIN_ELEMENTS:
        return "numpy"
    return backend
