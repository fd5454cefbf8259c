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
``prune_layer`` prunes one layer's weight (per Conv group) with a method and reports what it cost.
SparseGPT and the layer error's quadratic forms run on torch when installed (``linalg``; CPU or
CUDA by ``device``), in numpy otherwise; under ``auto`` a small layer (fewer than
``TORCH_MIN_ELEMENTS`` weights) stays in numpy, where a column step costs less overhead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OnnxSparseError
from ..format import from_rows_k, group_stats, keep_top, prune_magnitude, to_rows_k
from .capture import Statistics
from .layers import Layer
from .linalg import quadratic_forms, resolve_device, sparsegpt_torch

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
    dense = to_rows_k(weight.astype(np.float64), layout=layer.layout)
    pruned = np.empty_like(dense)
    per_group = dense.shape[0] // layer.groups
    hessians = stats.mean() if stats is not None else None
    backend = layer_backend(getattr(options, "device", "auto"), per_group * dense.shape[1])
    num = den = 0.0
    for g in range(layer.groups):
        rows = slice(g * per_group, (g + 1) * per_group)
        hessian = hessians[g] if hessians is not None else None
        pruned[rows] = prune_matrix(options.method, dense[rows], hessian, options.n, options.m, options.block_size,
                                    options.damp, backend)
        if hessian is not None:
            energy, total = quadratic_forms(pruned[rows], dense[rows], hessian, backend)
            num += energy
            den += total
    out = from_rows_k(pruned, layer.layout, layer.shape).astype(weight.dtype)
    total = float(np.abs(dense).sum())
    result = LayerResult(
        name=layer.name, op_type=layer.op_type, weight=layer.weight, shape=layer.shape, params=layer.params,
        method=options.method,
        retained=float(np.abs(to_rows_k(out.astype(np.float64), layer.layout)).sum()) / total if total else 1.0,
        layer_error=(float(np.sqrt(max(num, 0.0) / den)) if den > 0 else 0.0) if stats is not None else None,
        compliant=group_stats(to_rows_k(out, layer.layout), options.n, options.m).share,
    )
    return out, result


def layer_backend(device: str, elements: int) -> str:
    """numpy, or torch on ``cpu``/``cuda``, for a layer of ``elements`` weights (per Conv group)."""
    backend = resolve_device(device)
    if device == "auto" and backend == "cpu" and elements < TORCH_MIN_ELEMENTS:
        return "numpy"
    return backend
