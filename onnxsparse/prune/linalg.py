"""Where SparseGPT's dense linear algebra runs: torch (CPU or CUDA) when installed, numpy otherwise.

A 4096x11008 layer needs a Cholesky factor of an 11008x11008 Hessian and 11008 column updates of
a [4096, block] slice; numpy forms the inverse factor explicitly (float64, a Python loop of large
temporaries), torch works from the Cholesky factor alone (block forward substitution, one GEMM per
block of 128 columns) in float32 like SparseGPT's reference, on every core (or the GPU). In float64
the torch path gives numpy's masks and values up to rounding; in float32 the same masks on the tests'
layers and values within 1e-3 of the largest (``tests/test_prune_linalg.py``).

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


def _hessian_into(buffer, hessian_sum: np.ndarray, samples: int, flipped: bool) -> None:
    """``buffer`` (a K x K torch tensor) <- H = ``hessian_sum`` / ``samples`` (``Statistics.mean``'s
    values, rounded to the buffer's dtype), with rows and columns reversed when ``flipped``; converted a
    block of rows at a time, so no second float64 K x K matrix is made."""
    import torch

    k = hessian_sum.shape[0]
    step = max(1, (4 << 20) // max(k, 1))
    for i in range(0, k, step):
        j = min(i + step, k)
        part = hessian_sum[k - j:k - i][::-1, ::-1] if flipped else hessian_sum[i:j]
        buffer[i:j].copy_(torch.from_numpy(np.ascontiguousarray(part) / samples))


def _reversed_factor(hessian_sum: np.ndarray, samples: int, damp: float, dtype, device):
    """(L, λ, the dead inputs' mask): the lower Cholesky factor of H + λI with rows and columns reversed
    (dead inputs' diagonal set to 1 first), λ = damp * mean(diag H), raised tenfold until the
    factorisation succeeds. R = flip(L) is upper with R R^T = H + λI, and (H + λI)^-1 = U^T U with
    U = R^-1, the upper factor SparseGPT visits; R's blocks are read from L (``_r_block``), never copied whole."""
    import torch

    diagonal = torch.from_numpy(np.diagonal(hessian_sum) / samples)
    dead = diagonal == 0  # inputs that never fire: no information, keep H invertible
    mean_diag = float(torch.where(dead, 1.0, diagonal).to(torch.float64).mean())
    k = hessian_sum.shape[0]
    buffer = torch.empty((k, k), dtype=dtype, device=device)
    for attempt in range(6):
        _hessian_into(buffer, hessian_sum, samples, flipped=True)  # again after a failed attempt
        buffer.diagonal()[dead.flip(0).to(device)] = 1.0
        buffer.diagonal().add_((damp * 10**attempt) * mean_diag)
        _, info = torch.linalg.cholesky_ex(buffer, out=(buffer, torch.empty((), dtype=torch.int32, device=device)))
        if int(info) == 0:
            return buffer, (damp * 10**attempt) * mean_diag, dead
    raise OnnxSparseError("SparseGPT: the layer's input Hessian is not positive definite even with damping")


def _r_block(lower, rows: slice, cols: slice):
    """R[rows, cols] for R = flip(L) (a copy of that block only)."""
    k = lower.shape[0]
    return lower[k - rows.stop:k - rows.start, k - cols.stop:k - cols.start].flip(0, 1)


def sparsegpt_torch(weight: np.ndarray, hessian: np.ndarray, n: int, m: int, block_size: int, damp: float,
                    device: str, dtype: str = "float32") -> np.ndarray:
    """``methods.sparsegpt`` on torch: the pruned ``[rows, K]`` matrix (float64 numpy) for H = ``hessian``."""
    pruned, _ = sparsegpt_layer_torch(weight, hessian, 1, n, m, block_size, damp, device, dtype, error=False)
    return pruned.astype(np.float64)


def sparsegpt_layer_torch(weight: np.ndarray, hessian_sum: np.ndarray, samples: int, n: int, m: int, block_size: int,
                          damp: float, device: str, dtype: str = "float32", error: bool = True):
    """SparseGPT of a ``[rows, K]`` matrix (any float dtype) for H = ``hessian_sum`` / ``samples``:
    (the pruned matrix as float32 numpy, or float64 for ``dtype="float64"``; the layer error's
    ``(energy, total)`` of ``quadratic_forms``, or None without ``error``).

    Same columns, masks and updates as numpy's, computed without U = R^-1 ever being formed (the
    inverse of an 11008x11008 factor costs as much as three Cholesky factorisations): with E the
    errors e_j and Y = D - P the change of the weights, SparseGPT's updates say P = D - E U, i.e.
    Y R = E. So when a block [s, t) starts, the updates from earlier blocks are
    W[:, s:t] = D[:, s:t] + Y[:, :s] R[:s, s:t] R[s:t, s:t]^-1, one GEMM of the rows already done
    (the lazy batch update, as a block forward substitution); inside the block the columns use
    U's diagonal block R[s:t, s:t]^-1 exactly as numpy does. ``dtype``: ``float32`` (default, as
    SparseGPT's reference; the damping keeps it well conditioned) or ``float64`` (numpy's values
    up to rounding). One K x K matrix in ``dtype`` is held: the factor. The layer error comes from the
    factor too: the errors E the columns spread and one more GEMM per block, D R (see below)."""
    import torch

    dt = getattr(torch, dtype)
    native = weight.dtype in (np.float16, np.float32, np.float64)
    source = weight if native else weight.astype(np.float32)  # bfloat16 (ml_dtypes): torch cannot take it
    with torch.no_grad():
        dense = torch.as_tensor(source, device=device).to(dt)
        lower, damping, dead = _reversed_factor(hessian_sum, max(samples, 1), damp, dt, device)
        rows, k = dense.shape
        pruned = torch.empty((rows, k), dtype=dt, device=device)
        change = torch.empty((rows, k), dtype=dt, device=device)  # Y = D - P, the columns done
        squares = torch.zeros((), dtype=torch.float64, device=device) if error else None  # sum(E^2) = Y H_d Y^T
        outputs = torch.zeros((), dtype=torch.float64, device=device)  # sum((D R)^2) = D H_d D^T
        block_size = max(m, block_size - block_size % m)
        for start in range(0, k, block_size):
            stop = min(start + block_size, k)
            eye = torch.eye(stop - start, dtype=dt, device=device)
            r_upto = _r_block(lower, slice(0, stop), slice(start, stop))  # R[:stop, s:t]
            hinv1 = torch.linalg.solve_triangular(r_upto[start:], eye, upper=True)
            w1 = dense[:, start:stop].clone()
            if start > 0:
                w1.addmm_(change[:, :start] @ r_upto[:start], hinv1)
            if error:
                outputs.add_(torch.sum(torch.square(dense[:, :stop] @ r_upto), dtype=torch.float64))
            columns = w1.T.contiguous()  # [block, rows]: each column's weights contiguous
            threads = torch.get_num_threads()
            if dense.device.type == "cpu":  # small steps: one thread (a second one only waits at barriers)
                torch.set_num_threads(1)
            try:
                _prune_block(columns, hinv1, n, m, squares)
            finally:
                torch.set_num_threads(threads)
            pruned[:, start:stop] = columns.T
            torch.sub(dense[:, start:stop], columns.T, out=change[:, start:stop])
        del lower
        forms = None
        if error:
            # With H_d = H + λI + (1 on dead inputs' diagonal) = R R^T and Y R = E: Y H Y^T = sum(E^2)
            # - λ|Y|^2 - |Y_dead|^2, D H D^T = |D R|^2 - λ|D|^2 - |D_dead|^2 (float64 sums of float32 products).
            def correction(a):
                whole = torch.sum(torch.square(a), dtype=torch.float64)
                gone = torch.sum(torch.square(a[:, dead.to(a.device)]), dtype=torch.float64) if bool(dead.any()) else 0.0
                return damping * float(whole) + float(gone)

            forms = (float(squares) - correction(change), float(outputs) - correction(dense))
        return pruned.cpu().numpy(), forms


def _prune_block(columns, hinv1, n: int, m: int, squares=None) -> None:
    """One block's columns ([block, rows], in place: they end as the pruned values), a group of M
    at a time: the group's masks from w^2 / U_jj^2, then column by column the error
    e = (w_j - q_j) / U_jj (zero where kept) spread over the group's later columns, and the group's
    errors over the block's later columns in one rank-M product. A column's own update would leave
    exactly q_j, so the group is masked at the end instead. ``squares`` (a float64 scalar tensor),
    when given, accumulates sum(e^2)."""
    import torch

    width, rows = columns.shape
    diag = torch.diagonal(hinv1)
    diag2 = (diag * diag)[:, None]
    err = torch.empty((m, rows), dtype=columns.dtype, device=columns.device)
    for g0 in range(0, width, m):
        g1 = g0 + m
        group = columns[g0:g1]
        order = torch.argsort(-(group * group / diag2[g0:g1]), dim=0, stable=True)  # ties: the earlier
        keep = torch.zeros((m, rows), dtype=torch.bool, device=columns.device)
        keep.scatter_(0, order[:n], True)
        scale = (~keep).to(columns.dtype) / diag[g0:g1, None]
        for i in range(m):
            torch.mul(group[i], scale[i], out=err[i])
            if i + 1 < m:
                group[i + 1:].addr_(hinv1[g0 + i, g0 + i + 1:g1], err[i], alpha=-1.0)
        group.mul_(keep)
        if squares is not None:
            squares.add_(torch.sum(err * err, dtype=torch.float64))
        if g1 < width:
            columns[g1:].addmm_(hinv1[g0:g1, g1:].T, err, alpha=-1.0)


def quadratic_forms(pruned: np.ndarray, dense: np.ndarray, hessian: np.ndarray, device: str) -> tuple[float, float]:
    """(sum((P-D) H (P-D)^T), sum(D H D^T)) over rows: the layer's output error energy and its
    output energy on the calibration inputs (H = X^T X / rows). A diagnostic: the products run in
    float32 (sums of non-negative terms), over H's upper block triangle only (H is symmetric:
    sum(A H A^T) = sum_j A_j H_jj A_j^T + 2 sum_{i<j} A_i H_ij A_j^T), half a full product's work."""
    return quadratic_forms_blocks([(pruned, dense)], hessian, device)


def quadratic_forms_blocks(blocks, hessian: np.ndarray, device: str) -> tuple[float, float]:
    """``quadratic_forms`` summed over (pruned rows, dense rows) blocks of one matrix: H converted once,
    each block's temporaries only as large as the block."""
    energy = total = 0.0
    if device == "numpy":
        h = hessian.astype(np.float32)
        for pruned, dense in blocks:
            diff = (pruned - dense).astype(np.float32)
            d = dense.astype(np.float32)
            energy += _symmetric_form(diff, h, np.sum)
            total += _symmetric_form(d, h, np.sum)
        return energy, total
    import torch

    with torch.no_grad():
        h = hessian if torch.is_tensor(hessian) else torch.as_tensor(hessian, device=device).float()
        sum64 = lambda a: a.sum(dtype=torch.float64)  # noqa: E731
        for pruned, dense in blocks:
            d = torch.as_tensor(dense, device=device)
            diff = (torch.as_tensor(pruned, device=device) - d).float()
            d = d.float()
            energy += _symmetric_form(diff, h, sum64)
            total += _symmetric_form(d, h, sum64)
        return energy, total


def _symmetric_form(a, h, total, block: int = 1024) -> float:
    """sum(A H A^T) for symmetric H, from H's diagonal blocks and the blocks above them."""
    k = h.shape[0]
    out = 0.0
    for start in range(0, k, block):
        stop = min(start + block, k)
        a_j = a[:, start:stop]
        out += float(total((a_j @ h[start:stop, start:stop]) * a_j))
        if start > 0:
            out += 2.0 * float(total((a[:, :start] @ h[:start, start:stop]) * a_j))
    return out
