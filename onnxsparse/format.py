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


def _group_tables() -> tuple[np.ndarray, ...]:
    """SPEC's encoding of a group of 4, for each of its 16 patterns of non-zero elements (bit i set:
    element i is non-zero): the nibble (``index0 | index1 << 2``), the positions of the two kept
    elements (``index0`` and ``1 + index1``), whether each slot holds an element, and the count."""
    nibble = np.zeros(16, np.uint8)
    pos0, pos1 = np.zeros(16, np.intp), np.ones(16, np.intp)
    has0, has1 = np.zeros(16, bool), np.zeros(16, bool)
    count = np.zeros(16, np.uint8)
    for code in range(16):
        nonzero = [i for i in range(GROUP) if code >> i & 1]
        count[code] = len(nonzero)
        first = next((i for i in nonzero if i <= 2), None)  # index0: the first non-zero among 0..2
        rest = [i for i in nonzero if i >= 1 and i != first]  # index1: the last other one among 1..3
        second = rest[-1] if rest else None
        index0 = first if first is not None else 0
        index1 = second - 1 if second is not None else 0
        nibble[code] = index0 | index1 << 2
        pos0[code], pos1[code] = index0, 1 + index1
        has0[code], has1[code] = first is not None, second is not None
    return nibble, pos0, pos1, has0, has1, count


_NIBBLE, _POS0, _POS1, _HAS0, _HAS1, _COUNT = _group_tables()
_BLOCK_ELEMENTS = 1 << 20  # rows are handled in blocks of about this many elements (cache-sized temporaries)


def _group_codes(groups: np.ndarray) -> np.ndarray:
    """``[..., G, 4]`` -> ``[..., G]`` uint8: each group's pattern of non-zero elements (-0.0 is zero)."""
    return _codes(_nonzero(groups))


def _codes(nonzero: np.ndarray) -> np.ndarray:
    """``[..., G, 4]`` bool -> ``[..., G]`` uint8 pattern codes."""
    # Four 0/1 bytes as one little-endian uint32; the multiply gathers bit 0 of each into bits 24..27.
    packed = np.ascontiguousarray(nonzero).view(np.uint8).view("<u4")[..., 0]
    return ((packed * np.uint32(0x01020408)) >> np.uint32(24)).astype(np.uint8)


def _row_blocks(rows: int, k: int):
    step = max(1, _BLOCK_ELEMENTS // max(k, 1))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def group_stats(matrix: np.ndarray, n: int = 2, m: int = GROUP) -> GroupStats:
    """Count the groups of m along the last axis with at most n non-zero elements."""
    rows, k = matrix.shape
    if k % m:
        raise NotTwoFourError(f"K={k} is not a multiple of {m}")
    if m != GROUP:
        nonzero = (matrix.reshape(rows, k // m, m) != 0).sum(axis=-1)
        return GroupStats(groups=int(nonzero.size), compliant=int((nonzero <= n).sum()))
    compliant = 0
    for start, stop in _row_blocks(rows, k):
        codes = _group_codes(matrix[start:stop].reshape(stop - start, k // m, m))
        compliant += int(np.bincount(codes.reshape(-1), minlength=16)[_COUNT <= n].sum())
    return GroupStats(groups=rows * (k // m), compliant=compliant)


def weight_group_stats(weight: np.ndarray, layout: str, n: int = 2) -> GroupStats:
    """``group_stats(to_rows_k(weight, layout), n)`` without the reordered copy: a ``"kn"`` weight's
    groups are 4 consecutive rows of W, counted where they lie."""
    if layout != "kn":
        return group_stats(to_rows_k(weight, layout), n)
    if weight.ndim != 2:
        raise ValueError(f"a 'kn' weight must have rank 2, got shape {weight.shape}")
    k, cols = weight.shape
    if k % GROUP:
        raise NotTwoFourError(f"K={k} is not a multiple of {GROUP}")
    compliant = 0
    for start, stop in _row_blocks(k // GROUP, GROUP * cols):
        block = weight[GROUP * start:GROUP * stop].reshape(stop - start, GROUP, cols)
        count = np.zeros((stop - start, cols), np.uint8)
        for element in range(GROUP):  # each group's count of non-zeros, element by element (no reordering)
            count += _nonzero(block[:, element]).view(np.uint8)
        compliant += int(np.count_nonzero(count <= n))
    return GroupStats(groups=(k // GROUP) * cols, compliant=compliant)


def _nonzero(array: np.ndarray) -> np.ndarray:
    """``array != 0`` (-0.0 is zero), for float16 and bfloat16 by their bits."""
    if array.dtype.itemsize == 2 and array.dtype.kind not in "iu":
        return (array.view(np.uint16) & np.uint16(0x7FFF)) != 0
    return array != 0


def compress(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compress a 2:4-compliant ``[rows, K]`` matrix into SPEC's ``(values, index)``."""
    if matrix.ndim != 2:
        raise ValueError(f"compress takes a [rows, K] matrix, got shape {matrix.shape}")
    return _compress_rows(lambda start, stop: matrix[start:stop], matrix.shape[0], matrix.shape[1], matrix.dtype)


def _compress_rows(block_of, rows: int, k: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """SPEC's encoding by table lookup on each group's pattern, a block of rows at a time
    (``block_of(start, stop)``: those rows of the ``[rows, K]`` matrix). Each slot starts as the
    element it takes when ``index`` is 0 (element 0, element 1) and is overwritten where the
    pattern puts it elsewhere; an empty slot is set to +0."""
    if k % GROUP:
        raise NotTwoFourError(f"K={k} is not a multiple of 4")
    groups_per_row = k // GROUP
    values = np.empty((rows, k // 2), dtype=dtype)
    index = np.zeros((rows, (k + 7) // 8), dtype=np.uint8)
    bits = np.dtype(f"<u{dtype.itemsize}")
    out = values.view(bits)
    bad = 0
    for start, stop in _row_blocks(rows, k):
        block = np.ascontiguousarray(block_of(start, stop))
        count = stop - start
        codes = _group_codes(block.reshape(count, groups_per_row, GROUP))
        patterns = np.bincount(codes.reshape(-1), minlength=16)
        bad += int(patterns[_COUNT > 2].sum())
        if bad:
            continue
        groups = block.view(bits).reshape(count, groups_per_row, GROUP)
        slots = out[start:stop].reshape(count, groups_per_row, 2)
        floats = block.reshape(count, groups_per_row, GROUP)
        nonzero = [_nonzero(floats[..., j]) for j in range(GROUP)]
        _slots([groups[..., j] for j in range(GROUP)], nonzero, slots[..., 0], slots[..., 1])
        nibbles = _NIBBLE[codes]
        index[start:stop] |= nibbles[:, 0::2]
        index[start:stop, : groups_per_row // 2] |= nibbles[:, 1::2] << 4
    if bad:
        raise NotTwoFourError(f"{bad} of {rows * groups_per_row} groups have more than 2 non-zeros")
    return values, index


def _slots(elements, nonzero, out0: np.ndarray, out1: np.ndarray) -> None:
    """The two slots of each 2:4-compliant group from its four elements (arrays of one shape, as
    unsigned ints) and whether each is non-zero: slot 0 takes the first non-zero of elements 0-2,
    slot 1 element 3 if non-zero, else element 2 if non-zero after a non-zero 0 or 1, else element
    1 if 0 and 1 are both non-zero; an empty slot is +0. Bitwise on all-ones masks: the terms are
    disjoint for a group of at most two non-zeros, so an OR selects (no masked copies)."""
    ones = elements[0].dtype.type(-1 & ((1 << 8 * elements[0].dtype.itemsize) - 1))
    masks = [np.multiply(flag, ones, dtype=elements[0].dtype) for flag in nonzero]
    kept = [np.bitwise_and(element, mask) for element, mask in zip(elements, masks)]  # -0.0 becomes +0
    either01 = masks[0] | masks[1]
    np.bitwise_or(kept[0], kept[1] & ~masks[0], out=out0)
    out0 |= kept[2] & ~either01
    np.bitwise_or(kept[3], kept[2] & either01, out=out1)
    out1 |= kept[1] & masks[0]


def empty_pair(rows: int, k: int, dtype, align: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Uninitialised ``values [rows, K/2]`` and ``index [rows, ceil(K/8)]`` arrays for ``compress_weight(...,
    out=...)``, each starting on a 64-byte boundary."""
    return _aligned_empty((rows, k // 2), np.dtype(dtype), align), _aligned_empty((rows, (k + 7) // 8), np.dtype(np.uint8), align)


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype, align: int = 64) -> np.ndarray:
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    skip = (-raw.ctypes.data) % align
    return raw[skip:skip + nbytes].view(dtype).reshape(shape)


_KN_STEP = 16  # groups of 4 rows of W per block: a block's temporaries of [16, N] stay near the core's cache


def _compress_kn(weight: np.ndarray, values: np.ndarray | None = None,
                 index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``compress_weight(W, "kn")`` where W lies: a block of 4-row groups of ``W[K, N]`` at a time, the
    slots and nibbles worked out on whole rows of W (each group's four elements are four rows of
    the block) and written transposed into ``values[N, K/2]`` and ``index[N, ceil(K/8)]`` (half and
    an eighth of the data, not the dense weight). Every temporary is allocated once per call and
    written with ``out=``; given ``values``/``index`` are filled in place (no fresh pages per weight).

    For a group of at most two non-zeros (each element masked to +0 where it counts as zero, so -0.0
    becomes +0): slot 1 = d | c if a or b | b if a (the terms are disjoint), and slot 0 is the XOR of
    the four elements with slot 1 (each non-zero lands in exactly one slot). The two slots are
    joined arithmetically into one item of twice the width (slot 1 in the high half) so the
    transposed copy moves whole groups; the nibble comes from the 0/1 non-zero flags as
    ``(f1 & ~f0) + 2 (f2 + (f2 & (f0 | f1))) + 8 f3``."""
    k, n = weight.shape
    if k % GROUP:
        raise NotTwoFourError(f"K={k} is not a multiple of 4")
    groups = k // GROUP
    dtype = weight.dtype
    size = dtype.itemsize
    bits = np.dtype(f"<u{size}")
    if values is None or index is None:
        values, index = empty_pair(n, k, dtype)
    elif (values.shape != (n, k // 2) or values.dtype != dtype or index.shape != (n, (k + 7) // 8)
          or index.dtype != np.uint8 or not (values.flags.c_contiguous and index.flags.c_contiguous)):
        raise ValueError(f"out arrays do not fit a {weight.shape} {dtype} weight")
    out = values.view(bits)
    by_bits = size == 2 and dtype.kind not in "iu"  # float16/bfloat16: -0.0 told apart by its bits
    magnitude = bits.type((1 << (8 * size - 1)) - 1)
    ones = bits.type((1 << (8 * size)) - 1)
    step = max(2, min(_KN_STEP, groups + groups % 2))
    shape = (step, n)
    kept = [np.empty(shape, bits) for _ in range(GROUP)]
    mask0, mask1, mask = (np.empty(shape, bits) for _ in range(3))
    either, other = np.empty(shape, bits), np.empty(shape, bits)
    flags = [np.empty(shape, np.bool_) for _ in range(GROUP)]
    count, nibbles, scratch = np.empty(shape, np.uint8), np.zeros((step + 1, n), np.uint8), np.empty(shape, np.uint8)
    wide = np.dtype(f"<u{2 * size}") if size <= 4 else None  # a group's two slots as one item
    if wide is not None:
        joined, low = np.empty(shape, wide), np.empty(shape, wide)
        shift = wide.type(8 * size)
        out_wide = out.view(wide)
    else:
        pair = np.empty((step, n, 2), bits)
    bad = 0
    for start in range(0, groups, step):
        stop = min(groups, start + step)
        c = stop - start
        block = weight[GROUP * start:GROUP * stop].reshape(c, GROUP, n)
        elements = block.view(bits)
        kept_c = [array[:c] for array in kept]
        flags_c = [array[:c] for array in flags]
        for j in range(GROUP):
            if by_bits:
                np.bitwise_and(elements[:, j], magnitude, out=kept_c[j])
                np.not_equal(kept_c[j], 0, out=flags_c[j])
            else:
                np.not_equal(block[:, j], 0, out=flags_c[j])
        f0, f1, f2, f3 = (flag.view(np.uint8) for flag in flags_c)
        total = count[:c]
        np.add(f0, f1, out=total)
        total += f2
        total += f3
        bad += int(np.count_nonzero(total > 2))
        if bad:
            continue
        m0, m1, m = mask0[:c], mask1[:c], mask[:c]
        for j, target in ((0, m0), (1, m1), (2, m), (3, m)):
            np.multiply(flags_c[j], ones, out=target)
            np.bitwise_and(elements[:, j], target, out=kept_c[j])
        k0, k1, k2, k3 = kept_c
        slot0, slot1 = either[:c], other[:c]
        np.bitwise_xor(k0, k1, out=slot0)
        slot0 ^= k2
        slot0 ^= k3
        np.bitwise_or(m0, m1, out=slot1)
        slot1 &= k2
        np.bitwise_and(k1, m0, out=k1)
        slot1 |= k1
        slot1 |= k3
        slot0 ^= slot1
        if wide is not None:
            item = joined[:c]
            np.copyto(item, slot1)
            np.left_shift(item, shift, out=item)
            np.copyto(low[:c], slot0)
            item |= low[:c]
            out_wide[:, start:stop] = item.T
        else:
            np.copyto(pair[:c, :, 0], slot0)
            np.copyto(pair[:c, :, 1], slot1)
            out.reshape(n, groups, 2)[:, start:stop] = pair[:c].transpose(1, 0, 2)
        # the nibbles, then two groups to a byte (even group low); an odd last group gets a 0 high nibble
        even = c + c % 2
        nib, extra = nibbles[:c], scratch[:c]
        nibbles[c:even] = 0
        np.greater(f1, f0, out=nib.view(np.bool_))
        np.bitwise_or(f0, f1, out=extra)
        extra &= f2
        extra += f2
        extra += extra
        nib += extra
        np.add(f3, f3, out=extra)
        extra += extra
        extra += extra
        nib += extra
        pairs = nibbles[:even].reshape(even // 2, 2, n)
        high = pairs[:, 1]
        np.multiply(high, np.uint8(16), out=high)
        pairs[:, 0] |= high
        index[:, start // 2:start // 2 + even // 2] = pairs[:, 0].T
    if bad:
        raise NotTwoFourError(f"{bad} of {n * groups} groups have more than 2 non-zeros")
    return values, index


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


def compress_weight(weight: np.ndarray, layout: str,
                    out: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Compress a weight in its ONNX layout: ``compress(to_rows_k(weight, layout))``, reordering a
    block of rows at a time instead of the whole weight (temporaries stay small). ``out``: the
    ``(values, index)`` arrays to fill (from ``empty_pair``, reused from weight to weight: no fresh
    pages to fault in and zero); a ``"kn"`` weight is compressed straight into them."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}")
    rank = 4 if layout == "oihw" else 2
    if weight.ndim != rank:
        raise ValueError(f"{'an' if layout == 'oihw' else 'a'} '{layout}' weight must have rank {rank}, got shape {weight.shape}")
    k = reduction_length(weight.shape, layout)
    if layout == "kn":
        return _compress_kn(weight, *(out or (None, None)))
    values, index = _compress_rows(lambda start, stop: to_rows_k(weight[start:stop], layout), weight.shape[0], k, weight.dtype)
    if out is None:
        return values, index
    if out[0].shape != values.shape or out[0].dtype != values.dtype or out[1].shape != index.shape:
        raise ValueError(f"out arrays do not fit a {weight.shape} {weight.dtype} weight")
    np.copyto(out[0], values)
    np.copyto(out[1], index)
    return out


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
