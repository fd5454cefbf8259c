"""SPEC's compressed format: the worked cases, -0.0, packing, layouts, round trips."""

import numpy as np
import pytest

from onnxsparse import format as fmt

# SPEC's worked cases: elements e0 e1 e2 e3 -> (index0, index1)
WORKED_CASES = {
    "00XY": (2, 2),
    "0X0Y": (1, 2),
    "000X": (0, 2),
    "00X0": (2, 0),
    "0000": (0, 0),
    "XY00": (0, 0),
    "X00Y": (0, 2),
    "0XY0": (1, 1),
}


def _group(pattern, x=1.5, y=-2.25, dtype=np.float32):
    return np.array([[0.0 if c == "0" else (x if c == "X" else y) for c in pattern]], dtype=dtype)


@pytest.mark.parametrize("pattern", sorted(WORKED_CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_worked_cases(pattern, dtype):
    group = _group(pattern, dtype=dtype)
    values, index = fmt.compress(group)
    nibble = int(index[0, 0]) & 0xF
    assert (nibble & 0x3, nibble >> 2) == WORKED_CASES[pattern]
    assert int(index[0, 0]) >> 4 == 0, "the spare high nibble of an odd group count is 0"
    assert np.array_equal(fmt.decompress(values, index), group)
    kept = sorted(v for v in group[0] if v != 0)
    assert sorted(v for v in values[0] if v != 0) == kept


def test_negative_zero_counts_as_zero():
    group = np.array([[-0.0, 3.0, -0.0, 4.0, 1.0, -0.0, -0.0, -0.0]], np.float32)
    assert fmt.group_stats(group).share == 1.0
    values, index = fmt.compress(group)
    assert np.array_equal(fmt.decompress(values, index), group)  # -0.0 == 0.0
    assert not np.signbit(values[values == 0]).any()


def test_three_nonzeros_rejected():
    with pytest.raises(fmt.NotTwoFourError, match="more than 2"):
        fmt.compress(np.array([[1.0, 2.0, 3.0, 0.0]], np.float32))


def test_k_not_multiple_of_four_rejected():
    with pytest.raises(fmt.NotTwoFourError, match="multiple of 4"):
        fmt.compress(np.zeros((2, 6), np.float32))


def test_packing_two_groups_per_byte():
    # group 0: 0XY0 -> (1, 1) -> nibble 0b0101; group 1: 000X -> (0, 2) -> nibble 0b1000
    row = np.array([[0, 1, 2, 0, 0, 0, 0, 3]], np.float32)
    values, index = fmt.compress(row)
    assert index.shape == (1, 1)
    assert int(index[0, 0]) == 0b1000_0101
    assert values.tolist() == [[1, 2, 0, 3]]


@pytest.mark.parametrize("k", [4, 8, 12, 20, 64, 100])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_round_trip_random(k, dtype):
    rng = np.random.default_rng(k)
    dense = fmt.prune_magnitude(rng.standard_normal((9, k)).astype(dtype))
    # sprinkle extra zeros so groups with 0 and 1 non-zeros occur too
    dense[rng.random(dense.shape) < 0.3] = 0
    values, index = fmt.compress(dense)
    assert values.shape == (9, k // 2) and values.dtype == dtype
    assert index.shape == (9, (k + 7) // 8) and index.dtype == np.uint8
    assert np.array_equal(fmt.decompress(values, index), dense)
    nibbles = np.stack([index & 0xF, index >> 4], axis=-1).reshape(9, -1)[:, : k // 4]
    assert ((nibbles & 3) != 3).all() and ((nibbles >> 2) != 3).all()


@pytest.mark.parametrize(
    "layout,shape",
    [("kn", (12, 5)), ("nk", (5, 12)), ("oihw", (6, 8, 3, 3)), ("oihw", (4, 4, 1, 1))],
)
def test_layouts_group_along_reduction_axis(layout, shape):
    rng = np.random.default_rng(1)
    weight = rng.standard_normal(shape).astype(np.float32)
    pruned = fmt.prune_weight_magnitude(weight, layout)
    assert fmt.group_stats(fmt.to_rows_k(pruned, layout)).share == 1.0
    assert np.array_equal(fmt.from_rows_k(fmt.to_rows_k(weight, layout), layout, shape), weight)
    values, index = fmt.compress_weight(pruned, layout)
    assert np.array_equal(fmt.decompress_weight(values, index, layout, shape), pruned)


def test_conv_groups_are_consecutive_input_channels():
    # OIHW: a group of 4 is 4 consecutive input channels at one (kh, kw); pruning one (kh, kw)
    # position must keep 2 of every 4 channels there.
    weight = np.arange(1, 1 + 2 * 8 * 2 * 2, dtype=np.float32).reshape(2, 8, 2, 2)
    pruned = fmt.prune_weight_magnitude(weight, "oihw")
    for oc in range(2):
        for kh in range(2):
            for kw in range(2):
                channels = pruned[oc, :, kh, kw]
                assert (channels.reshape(2, 4) != 0).sum(axis=1).tolist() == [2, 2]
                # magnitude keeps the two largest, i.e. the last two channels of each group
                assert (channels.reshape(2, 4)[:, 2:] != 0).all()


def test_matmul_groups_run_down_columns():
    weight = np.arange(1, 1 + 8 * 3, dtype=np.float32).reshape(8, 3)  # [K, N]
    pruned = fmt.prune_weight_magnitude(weight, "kn")
    assert ((pruned.reshape(2, 4, 3) != 0).sum(axis=1) == 2).all()


def test_invalid_index_value_rejected():
    values = np.ones((1, 2), np.float32)
    with pytest.raises(ValueError, match="invalid"):
        fmt.decompress(values, np.array([[0x03]], np.uint8))


def _spec_encode(rows_k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SPEC's encoding group by group, in plain Python (the table-driven code is checked against it)."""
    rows, k = rows_k.shape
    values = np.zeros((rows, k // 2), rows_k.dtype)
    index = np.zeros((rows, (k + 7) // 8), np.uint8)
    for r in range(rows):
        for g in range(k // 4):
            group = rows_k[r, 4 * g:4 * g + 4]
            nonzero = [i for i in range(4) if group[i] != 0]
            first = next((i for i in nonzero if i <= 2), None)
            rest = [i for i in nonzero if i >= 1 and i != first]
            second = rest[-1] if rest else None
            if first is not None:
                values[r, 2 * g] = group[first]
            if second is not None:
                values[r, 2 * g + 1] = group[second]
            nibble = (first or 0) | ((second - 1 if second is not None else 0) << 2)
            index[r, g // 2] |= nibble << (4 * (g % 2))
    return values, index


@pytest.mark.parametrize("block", [1 << 20, 24], ids=["one-block", "many-blocks"])
def test_compress_equals_spec_group_by_group(block, monkeypatch):
    """Every layout and dtype, groups of 0 to 2 non-zeros (all six pairs), -0.0 and NaN, K/4 odd and
    even; with small blocks the row blocks (and a "kn" weight's odd last block of groups) are many."""
    monkeypatch.setattr(fmt, "_BLOCK_ELEMENTS", block)
    monkeypatch.setattr(fmt, "_KN_STEP", 16 if block > 24 else 2)
    import ml_dtypes

    rng = np.random.default_rng(7)
    for trial in range(60):
        layout = ("kn", "nk", "oihw")[trial % 3]
        dtype = (np.float32, np.float16, ml_dtypes.bfloat16)[trial // 3 % 3]
        shape = {"kn": (4 * (3 + trial % 5), 7), "nk": (5, 4 * (3 + trial % 5)), "oihw": (3, 4 * (1 + trial % 3), 2, 1)}[layout]
        rows_k = rng.standard_normal(fmt.to_rows_k(np.zeros(shape), layout).shape).astype(np.float32)
        keep = rng.random(rows_k.shape) < 0.6
        rows_k = np.where(fmt.keep_top(rng.random(rows_k.shape)) & keep, rows_k, 0).astype(np.float32)
        rows_k[(rows_k == 0) & (rng.random(rows_k.shape) < 0.3)] = -0.0
        if trial % 7 == 0:
            rows_k[rows_k > 1.5] = np.nan
        rows_k = rows_k.astype(dtype)
        weight = fmt.from_rows_k(rows_k, layout, shape)
        values, index = fmt.compress_weight(weight, layout)
        expected_values, expected_index = _spec_encode(rows_k)
        np.testing.assert_array_equal(index, expected_index)
        assert values.dtype == rows_k.dtype
        assert values.view(np.uint8).tobytes() == expected_values.view(np.uint8).tobytes()  # +0 in empty slots
        stats = fmt.weight_group_stats(weight, layout)
        assert (stats.groups, stats.compliant) == (rows_k.size // 4, rows_k.size // 4)
        noisy = np.where(rng.random(shape) < 0.3, np.ones((), dtype), weight)
        compliant = int(((fmt.to_rows_k(noisy, layout).reshape(-1, 4) != 0).sum(axis=1) <= 2).sum())
        for found in (fmt.weight_group_stats(noisy, layout), fmt.group_stats(fmt.to_rows_k(noisy, layout))):
            assert (found.groups, found.compliant) == (rows_k.size // 4, compliant)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64", "int8"])
def test_kn_compress_into_given_arrays(dtype, monkeypatch):
    """``compress_weight(W, "kn", out=...)`` fills the given arrays (whatever they held) with SPEC's
    encoding, for each element width the encoder joins two slots for (and float64, which it does
    not); odd and even group counts, blocks of 2 groups with an odd last one, -0.0, NaN and Inf."""
    import ml_dtypes

    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    rng = np.random.default_rng(11)
    for step in (2, 16):
        monkeypatch.setattr(fmt, "_KN_STEP", step)
        for k, n in ((4, 3), (20, 9), (44, 5), (64, 33)):
            rows_k = rng.standard_normal((n, k)).astype(np.float32) * 50
            rows_k = np.where(fmt.keep_top(rng.random(rows_k.shape)) & (rng.random(rows_k.shape) < 0.7), rows_k, 0)
            if dtype != "int8":
                rows_k[(rows_k == 0) & (rng.random(rows_k.shape) < 0.3)] = -0.0
                rows_k[(rows_k > 60)] = np.nan
                rows_k[(rows_k < -60)] = -np.inf
            rows_k = rows_k.astype(np_dtype)
            weight = fmt.from_rows_k(rows_k, "kn", (k, n))
            out = fmt.empty_pair(n, k, np_dtype)
            out[0].view(np.uint8)[...] = 0xA5
            out[1][...] = 0xA5
            values, index = fmt.compress_weight(weight, "kn", out=out)
            assert values is out[0] and index is out[1]
            expected_values, expected_index = _spec_encode(rows_k)
            np.testing.assert_array_equal(index, expected_index)
            assert values.view(np.uint8).tobytes() == expected_values.view(np.uint8).tobytes()
            fresh = fmt.compress_weight(weight, "kn")
            assert fresh[0].tobytes() == values.tobytes() and fresh[1].tobytes() == index.tobytes()
    with pytest.raises(ValueError, match="out arrays"):
        fmt.compress_weight(np.zeros((8, 4), np_dtype), "kn", out=fmt.empty_pair(4, 12, np_dtype))
    bad = np.zeros((8, 4), np_dtype)
    bad[4:7, 2] = 1
    with pytest.raises(fmt.NotTwoFourError, match="1 of 8 groups"):
        fmt.compress_weight(bad, "kn", out=fmt.empty_pair(4, 8, np_dtype))
