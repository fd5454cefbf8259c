"""SPEC's 2:4 compressed format and the sparse axis of each weight layout, in numpy.

This module is the reference every kernel and pass is checked against.

A weight is first viewed as a matrix ``[rows, K]``: one row per output feature, its K elements in
reduction order. The layouts the compiler meets:

- ``"kn"``: MatMul's ``W[K, N]`` and Gemm's B with transB=0. rows = N; row n is column n of W.
- ``"nk"``: Gemm's B with transB=1, ``[N, K]``. rows = N; row n is row n of B.
- ``"oihw"``: Conv's ``W[OC, C/group, KH, KW]``. rows = OC; a row's K = KH*KW*(C/group)
  elements run in (kh, kw, c) order, so that each group of 4 is 4 consecutive input channels
  at one kernel position.

Groups of 4 run along K. A group is 2:4-compliant when at most 2 of its elements are non-zero
(-0.0 counts as zero). ``compress`` turns a compliant ``[rows, K]`` matrix into ``values``
``[rows, K/2]`` and ``index`` ``[rows, ceil(K/8)]`` (uint8, a nibble per group: even groups in the
low nibble, ``index0`` in bits 0-1, ``index1`` in bits 2-3); ``decompress`` inverts it by adding
``values[2g]`` at element ``index0`` and ``values[2g+1]`` at element ``1 + index1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAYOUTS = ("kn", "nk", "oihw")
GROUP = 4


class NotTwoFourError(ValueError):
    """A weight has a group with more than two non-zero elements, or K is not a multiple of 4."""


def reduction_length(shape: tuple[int, ...], layout: str) -> int:
    """K, the length of the reduction axis of a weight of this shape and layout."""
    if layout == "kn":
        return int(shape[0])
    if layout == "nk":
        return int(shape[1])
    if layout == "oihw":
        return int(np.prod(shape[1:]))
    raise ValueError(f"unknown layout {layout!r}")


def to_rows_k(weight: np.ndarray, layout: str) -> np.ndarray:
    """View a weight as the ``[rows, K]`` matrix of SPEC (a copy where the order changes)."""
    if layout == "kn":
        if weight.ndim != 2:
            raise ValueError(f"a 'kn' weight must have rank 2, got shape {weight.shape}")
        return np.ascontiguousarray(weight.T)
    if layout == "nk":
        if weight.ndim != 2:
            raise ValueError(f"an 'nk' weight must have rank 2, got shape {weight.shape}")
        return np.ascontiguousarray(weight)
    if layout == "oihw":
        if weight.ndim != 4:
            raise ValueError(f"an 'oihw' weight must have rank 4, got shape {weight.shape}")
        oc = weight.shape[0]
        # [OC, C, KH, KW] -> [OC, KH, KW, C] -> [OC, KH*KW*C]
        return np.ascontiguousarray(weight.transpose(0, 2, 3, 1).reshape(oc, -1))
    raise ValueError(f"unknown layout {layout!r}")


def from_rows_k(matrix: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of ``to_rows_k``: the weight of the given shape and layout."""
    if layout == "kn":
        return np.ascontiguousarray(matrix.T).reshape(shape)
    if layout == "nk":
        return np.ascontiguousarray(matrix).reshape(shape)
    if layout == "oihw":
        oc, c, kh, kw = shape
        return np.ascontiguousarray(matrix.reshape(oc, kh, kw, c).transpose(0, 3, 1, 2))
    raise ValueError(f"unknown layout {layout!r}")


@dataclass(frozen=True)
class GroupStats:
    """How much of a [rows, K] matrix is 2:4 along K."""

    groups: int
    compliant: int

    @property
    def share(self) -> float:
        """Share of compliant groups, 0..1 (1.0 for a matrix with no groups)."""
        return 1.0 if self.groups == 0 else self.compliant / self.groups


def group_stats(matrix: np.ndarray, n: int = 2, m: int = GROUP) -> GroupStats:
    """Count the groups of m along the last axis with at most n non-zero elements."""
    rows, k = matrix.shape
    if k % m:
        raise NotTwoFourError(f"K={k} is not a multiple of {m}")
    nonzero = (matrix.reshape(rows, k // m, m) != 0).sum(axis=-1)
    return GroupStats(groups=int(nonzero.size), compliant=int((nonzero <= n).sum()))


def compress(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compress a 2:4-compliant ``[rows, K]`` matrix into SPEC's ``(values, index)``."""
    if matrix.ndim != 2:
        raise ValueError(f"compress takes a [rows, K] matrix, got shape {matrix.shape}")
    rows, k = matrix.shape
    if k % GROUP:
        raise NotTwoFourError(f"K={k} is not a multiple of 4")
    groups = matrix.reshape(rows, k // GROUP, GROUP)
    nonzero = groups != 0
    if (nonzero.sum(axis=-1) > 2).any():
        bad = int((nonzero.sum(axis=-1) > 2).sum())
        raise NotTwoFourError(f"{bad} of {nonzero.shape[0] * nonzero.shape[1]} groups have more than 2 non-zeros")

    # index0: first non-zero among elements 0..2 (0 when none).
    head = nonzero[..., :3]
    has_first = head.any(axis=-1)
    first = np.where(has_first, head.argmax(axis=-1), 0)
    # index1: last non-zero among elements 1..3 other than the one index0 took (0 when none).
    tail = nonzero[..., 1:].copy()
    taken = has_first & (first >= 1)
    rr, gg = np.nonzero(taken)
    tail[rr, gg, first[taken] - 1] = False
    has_second = tail.any(axis=-1)
    second = np.where(has_second, 2 - tail[..., ::-1].argmax(axis=-1), 0)

    take0 = np.take_along_axis(groups, first[..., None], axis=-1)[..., 0]
    take1 = np.take_along_axis(groups, (second + 1)[..., None], axis=-1)[..., 0]
    zero = np.zeros((), dtype=matrix.dtype)
    values = np.empty((rows, k // 2), dtype=matrix.dtype)
    values[:, 0::2] = np.where(has_first, take0, zero)
    values[:, 1::2] = np.where(has_second, take1, zero)
    # An empty slot stores zero; normalise -0.0 so the bytes do not depend on the sign of zero.
    values[values == 0] = zero

    nibbles = (first | (second << 2)).astype(np.uint8)
    if nibbles.shape[1] % 2:
        nibbles = np.concatenate([nibbles, np.zeros((rows, 1), np.uint8)], axis=1)
    index = (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).astype(np.uint8)
    return values, np.ascontiguousarray(index)


def decompress(values: np.ndarray, index: np.ndarray, k: int | None = None) -> np.ndarray:
    """The dense ``[rows, K]`` matrix that ``(values, index)`` encode."""
    rows, half = values.shape
    k = 2 * half if k is None else k
    if k != 2 * half or k % GROUP:
        raise ValueError(f"values of shape {values.shape} do not encode K={k}")
    ngroups = k // GROUP
    if index.shape != (rows, (k + 7) // 8):
        raise ValueError(f"index has shape {index.shape}, expected {(rows, (k + 7) // 8)}")
    nibbles = np.empty((rows, 2 * index.shape[1]), dtype=np.uint8)
    nibbles[:, 0::2] = index & 0xF
    nibbles[:, 1::2] = index >> 4
    nibbles = nibbles[:, :ngroups]
    first = (nibbles & 0x3).astype(np.int64)
    second = ((nibbles >> 2) & 0x3).astype(np.int64)
    if (first == 3).any() or (second == 3).any():
        raise ValueError("index holds the invalid 2-bit value 3")
    dense = np.zeros((rows, ngroups, GROUP), dtype=values.dtype)
    r, g = np.indices((rows, ngroups))
    np.add.at(dense, (r, g, first), values[:, 0::2])
    np.add.at(dense, (r, g, second + 1), values[:, 1::2])
    return dense.reshape(rows, k)


def compress_weight(weight: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Compress a weight in its ONNX layout (``to_rows_k`` then ``compress``)."""
    return compress(to_rows_k(weight, layout))


def decompress_weight(values: np.ndarray, index: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray:
    """The dense weight, in its ONNX layout and shape, that ``(values, index)`` encode."""
    return from_rows_k(decompress(values, index), layout, shape)


def keep_top(scores: np.ndarray, n: int = 2, m: int = GROUP) -> np.ndarray:
    """Boolean mask of a [rows, K] matrix keeping the n highest scores of each group of m along K
    (ties: the earlier element)."""
    rows, k = scores.shape
    if k % m:
        raise NotTwoFourError(f"K={k} is not a multiple of {m}")
    groups = scores.reshape(rows, k // m, m)
    order = np.argsort(-groups, axis=-1, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return keep.reshape(rows, k)


def prune_magnitude(matrix: np.ndarray, n: int = 2, m: int = GROUP) -> np.ndarray:
    """Keep the n largest-magnitude elements of each group of m along the last axis of [rows, K]."""
    keep = keep_top(np.abs(matrix.astype(np.float64)), n, m)
    return np.where(keep, matrix, np.zeros((), matrix.dtype))


def prune_weight_magnitude(weight: np.ndarray, layout: str, n: int = 2, m: int = GROUP) -> np.ndarray:
    """Magnitude-prune a weight in its ONNX layout to n:m along SPEC's axis."""
    return from_rows_k(prune_magnitude(to_rows_k(weight, layout), n, m), layout, weight.shape)
