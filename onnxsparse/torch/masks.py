"""N:M masks along the axis SPEC compresses, in PyTorch.

SPEC's groups run along the reduction axis K of each product. In PyTorch's weight layouts:

- ``nn.Linear``, weight ``[out_features, in_features]``: K = in_features, groups of M along each
  row. Exported, it becomes ``Gemm(transB=1)`` (B ``[N, K]``, layout ``"nk"``) or
  ``MatMul(X, W.T)`` (``"kn"``); both put the groups along in_features.
- ``nn.Conv2d``, weight ``[OC, C/groups, KH, KW]`` (ONNX's OIHW, layout ``"oihw"``): groups of M
  along C/groups for each (oc, kh, kw). A grouped conv's weight already holds one group's input
  channels per output channel, so groups never cross conv groups.

Every function here works on the "grouped view" ``[rows, K]`` whose last axis is K:
``weight.permute(0, 2, 3, 1).reshape(OC * KH * KW, C/groups)`` for a conv (one row per
(oc, kh, kw)), the weight itself for a linear layer.

A mask keeps the N highest-scoring elements of every group of M (ModelOpt's ``mn_1d_best``):
the score is ``|w|`` for magnitude pruning, ``|w| * ||x_k||`` for Wanda.
"""

from __future__ import annotations

import math

import torch

LINEAR = "linear"
CONV2D = "conv2d"
KINDS = (LINEAR, CONV2D)


def to_groups(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """The ``[rows, K]`` view of a weight whose last axis is the sparse axis (a copy for a conv)."""
    if kind == LINEAR:
        return weight
    if kind == CONV2D:
        oc, cg, kh, kw = weight.shape
        return weight.permute(0, 2, 3, 1).reshape(oc * kh * kw, cg)
    raise ValueError(f"unknown layer kind {kind!r}")


def from_groups(matrix: torch.Tensor, kind: str, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``to_groups``: a tensor of the weight's shape."""
    if kind == LINEAR:
        return matrix.reshape(shape)
    if kind == CONV2D:
        oc, cg, kh, kw = shape
        return matrix.reshape(oc, kh, kw, cg).permute(0, 3, 1, 2).contiguous()
    raise ValueError(f"unknown layer kind {kind!r}")


def reduction_length(weight_shape: torch.Size | tuple[int, ...], kind: str) -> int:
    """K: in_features for a linear layer, in_channels/groups for a conv."""
    return int(weight_shape[1])


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Boolean mask keeping the n highest scores of every group of m along the last axis of [rows, K]."""
    check_pattern(n, m)
    rows, k = scores.shape
    if k % m:
        raise ValueError(f"K={k} is not a multiple of M={m}")
    groups = scores.detach().reshape(rows, k // m, m)
    keep = groups.topk(n, dim=-1).indices
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=scores.device)
    mask.scatter_(-1, keep, True)
    return mask.reshape(rows, k)


def weight_mask(scores: torch.Tensor, kind: str, n: int = 2, m: int = 4) -> torch.Tensor:
    """N:M mask of a weight's shape from per-element scores of that shape, along SPEC's axis."""
    return from_groups(nm_mask(to_groups(scores, kind), n, m), kind, scores.shape)


def magnitude_mask(weight: torch.Tensor, kind: str, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep the n largest |w| of every group of m."""
    return weight_mask(weight.detach().abs(), kind, n, m)


def groups_over(weight: torch.Tensor, kind: str, n: int, m: int) -> int:
    """How many groups of m along SPEC's axis hold more than n non-zeros (-0.0 counts as zero)."""
    matrix = to_groups(weight.detach(), kind)
    rows, k = matrix.shape
    nonzero = (matrix != 0).reshape(rows, k // m, m).sum(dim=-1)
    return int((nonzero > n).sum())


def check_pattern(n: int, m: int) -> None:
    if not (isinstance(n, int) and isinstance(m, int)) or m < 1 or not 0 < n <= m:
        raise ValueError(f"an N:M pattern needs integers 0 < N <= M, got {n}:{m}")


def compilable(n: int, m: int) -> bool:
    """Whether every N:M-sparse weight (K a multiple of lcm(M, 4)) is 2:4 along the same axis.

    M dividing 4 (1:2, 1:4, 2:4): each group of 4 holds 4/M groups of M, at most 4N/M non-zeros.
    M a multiple of 4 (1:8, 2:8, 2:16): a group of 4 lies inside one group of M, at most N non-zeros.
    Any other M (3, 6, ...) lets a group of 4 straddle two groups of M: no guarantee.
    """
    if 4 % m == 0:
        return 4 * n <= 2 * m
    if m % 4 == 0:
        return n <= 2
    return False


def required_multiple(n: int, m: int) -> int:
    """The multiple of which K must be for the layer to be masked (and compiled, when it can be)."""
    return math.lcm(m, 4) if compilable(n, m) else m
