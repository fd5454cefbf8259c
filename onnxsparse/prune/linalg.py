"""Where SparseGPT's dense linear algebra runs: torch (CPU or CUDA) when installed, numpy otherwise.

A 4096x11008 layer needs the inverse Cholesky factor of an 11008x11008 Hessian and 11008 column
updates of a [4096, block] slice; numpy does both on one thread's worth of LAPACK calls and a
Python loop of large temporaries, torch in place on every core (or the GPU). Both compute in
float64 in the same order, so they give the same masks and values up to float rounding
(``tests/test_prune_linalg.py``).

``--device``: ``auto`` (default: CUDA when torch sees a GPU, else torch on the CPU, else numpy),
``cpu`` (torch on the CPU when installed, else numpy), ``cuda`` (refused in one line without a
CUDA build of torch and a GPU), ``numpy`` (never torch). torch is the optional extra
``pip install "onnxsparse[torch]"``; it is imported only when a data-driven method runs.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from ..errors import OnnxSparseError

DEVICES = ("auto", "cpu", "cuda", "numpy")


def resolve_device(device: str) -> str:
    """``numpy``, ``cpu`` (torch) or ``cuda`` (torch) for a ``--device`` value."""
    if device not in DEVICES:
        raise OnnxSparseError(f"unknown --device {device!r} (choose from {', '.join(DEVICES)})")
    if device == "numpy":
        return "numpy"
    if importlib.util.find_spec("torch") is None:
        if device == "cuda":
            raise OnnxSparseError('--device cuda needs torch with CUDA: pip install "onnxsparse[torch]"')
        return "numpy"
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise OnnxSparseError("--device cuda: torch sees no CUDA GPU (a CPU-only build, or no driver)")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _keep_top(scores, n: int, m: int):
    """torch twin of ``format.keep_top``: the n highest of each group of m (ties: the earlier)."""
    import torch

    rows, k = scores.shape
    order = torch.argsort(-scores.reshape(rows, k // m, m), dim=-1, stable=True)
    keep = torch.zeros((rows, k // m, m), dtype=torch.bool, device=scores.device)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(rows, k)


def _inverse_cholesky_upper(hessian, damp: float):
    """Upper U with U^T U = (H + λI)^-1, from one Cholesky factorisation and one triangular solve:
    the lower factor L' of H with rows and columns reversed gives H = R R^T with R = rev(L') upper,
    so U = R^-1 (upper, and unique with a positive diagonal: numpy's inverse-then-Cholesky factor)."""
    import torch

    diagonal = torch.diagonal(hessian).flip(0)  # the reversed matrix's diagonal
    dead = diagonal == 0  # inputs that never fire: no information, keep H invertible
    mean_diag = float(torch.where(dead, 1.0, diagonal).mean())
    for attempt in range(6):
        reversed_h = hessian.flip(0, 1)  # a copy: the caller's H is left as it is
        reversed_h.diagonal()[dead] = 1.0
        reversed_h.diagonal().add_((damp * 10**attempt) * mean_diag)
        lower, info = torch.linalg.cholesky_ex(reversed_h)
        del reversed_h
        if int(info) != 0:
            continue
        upper = lower.flip(0, 1)
        del lower
        eye = torch.eye(upper.shape[0], dtype=upper.dtype, device=upper.device)
        return torch.linalg.solve_triangular(upper, eye, upper=True)
    raise OnnxSparseError("SparseGPT: the layer's input Hessian is not positive definite even with damping")


def sparsegpt_torch(weight: np.ndarray, hessian: np.ndarray, n: int, m: int, block_size: int, damp: float,
                    device: str) -> np.ndarray:
    """``methods.sparsegpt`` on torch (same steps, float64): the pruned ``[rows, K]`` float64 matrix."""
    import torch

    with torch.no_grad():
        w = torch.as_tensor(weight, device=device).to(torch.float64).clone()
        hinv = _inverse_cholesky_upper(torch.as_tensor(hessian, device=device).to(torch.float64), damp)
        rows, k = w.shape
        block_size = max(m, block_size - block_size % m)
        for start in range(0, k, block_size):
            stop = min(start + block_size, k)
            w1 = w[:, start:stop].clone()
            q1 = torch.zeros_like(w1)
            err1 = torch.zeros_like(w1)
            hinv1 = hinv[start:stop, start:stop]
            diag = torch.diagonal(hinv1)
            threads = torch.get_num_threads()
            if w.device.type == "cpu":  # small steps: one thread (a second one only waits at barriers)
                torch.set_num_threads(1)
            try:
                _prune_block(w1, q1, err1, hinv1, diag, n, m)
            finally:
                torch.set_num_threads(threads)
            w[:, start:stop] = q1
            if stop < k:
                w[:, stop:].addmm_(err1, hinv[start:stop, stop:], alpha=-1.0)
        return w.cpu().numpy()


def _prune_block(w1, q1, err1, hinv1, diag, n: int, m: int) -> None:
    """One block's columns, a group of M at a time: masks, quantised values, spread errors."""
    width = w1.shape[1]
    for g0 in range(0, width, m):  # one group of M columns at a time
        g1 = g0 + m
        scores = w1[:, g0:g1] ** 2 / diag[g0:g1][None, :] ** 2
        pruned = ~_keep_top(scores, n, m)
        for i in range(g0, g1):
            column = w1[:, i]
            quantised = column.masked_fill(pruned[:, i - g0], 0.0)
            q1[:, i] = quantised
            err = (column - quantised) / hinv1[i, i]
            w1[:, i:g1].addr_(err, hinv1[i, i:g1], alpha=-1.0)
            err1[:, i] = err
        # The group's error reaches the block's later columns in one rank-M product (the same
        # sums as numpy's column-by-column update, in another order).
        if g1 < width:
            w1[:, g1:].addmm_(err1[:, g0:g1], hinv1[g0:g1, g1:], alpha=-1.0)


def quadratic_forms(pruned: np.ndarray, dense: np.ndarray, hessian: np.ndarray, device: str) -> tuple[float, float]:
    """(sum((P-D) H (P-D)^T), sum(D H D^T)) over rows: the layer's output error energy and its
    output energy on the calibration inputs (H = X^T X / rows). A diagnostic: the products run in
    float32 (sums of non-negative terms; a 4096x11008 layer's two products are 1e12 operations)."""
    if device == "numpy":
        h = hessian.astype(np.float32)
        diff = (pruned - dense).astype(np.float32)
        d = dense.astype(np.float32)
        return float(np.sum((diff @ h) * diff, dtype=np.float64)), float(np.sum((d @ h) * d, dtype=np.float64))
    import torch

    with torch.no_grad():
        h = torch.as_tensor(hessian, device=device).float()
        d = torch.as_tensor(dense, device=device)
        diff = (torch.as_tensor(pruned, device=device) - d).float()
        d = d.float()
        return (float(((diff @ h) * diff).sum(dtype=torch.float64)), float(((d @ h) * d).sum(dtype=torch.float64)))
