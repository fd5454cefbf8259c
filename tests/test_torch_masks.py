"""onnxsparse.torch masks: best N of M, SPEC's sparse axis per layer kind, skipped layers, Wanda's norms."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install '.[torch]')")
from torch import nn  # noqa: E402

import onnxsparse.torch as ost  # noqa: E402
from onnxsparse import format as fmt  # noqa: E402
from onnxsparse.torch.calibration import input_norms  # noqa: E402


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (1, 2), (2, 8), (4, 8), (3, 6)])
def test_nm_mask_keeps_the_best_n_of_every_m(n, m):
    scores = torch.rand(5, 4 * m, generator=torch.Generator().manual_seed(n * 10 + m))
    mask = ost.nm_mask(scores, n, m)
    groups, kept = scores.reshape(5, 4, m), mask.reshape(5, 4, m)
    assert (kept.sum(dim=-1) == n).all()
    # the kept elements are the n largest: no dropped score beats a kept one
    for g, k in zip(groups.reshape(-1, m), kept.reshape(-1, m)):
        assert g[k].min() >= g[~k].max() if n < m else True
        best = max(sum(g[list(c)]) for c in itertools.combinations(range(m), n))
        assert torch.isclose(g[k].sum(), best)


def test_linear_mask_runs_along_in_features():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    ost.prepare(layer).finalize()
    w = layer.weight.detach().numpy()
    assert ((w.reshape(8, 4, 4) != 0).sum(axis=-1) == 2).all()
    # SPEC's view of the exported Gemm's B [N, K] is 2:4; the other axis is not
    assert fmt.group_stats(fmt.to_rows_k(w, "nk")).share == 1.0
    assert fmt.group_stats(fmt.to_rows_k(w, "kn")).share < 1.0


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_mask_runs_along_input_channels_per_position(groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, groups=groups)
    ost.prepare(conv).finalize()
    w = conv.weight.detach().numpy()  # [OC, C/groups, KH, KW]
    cg = 8 // groups
    # for every (oc, kh, kw): 2 of each 4 consecutive input channels
    per_position = (w.transpose(0, 2, 3, 1).reshape(8, 3, 3, cg // 4, 4) != 0).sum(axis=-1)
    assert (per_position == 2).all()
    assert fmt.group_stats(fmt.to_rows_k(w, "oihw")).share == 1.0
    # groups along the kernel positions instead (the OIHW memory order) are not 2:4
    assert fmt.group_stats(w.reshape(8, -1)[:, :8]).share < 1.0


def test_layers_whose_k_is_not_a_multiple_of_m_are_skipped_with_the_reason():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),  # K = 3
        nn.Conv2d(8, 8, 3, groups=8),  # depthwise: K = 1
        nn.Conv2d(8, 8, 1),  # K = 8: masked
        nn.Flatten(),
        nn.Linear(6, 4),  # K = 6
        nn.Linear(4, 4),  # masked
    )
    sparsifier = ost.prepare(model)
    reasons = {layer.name: layer.reason for layer in sparsifier.layers}
    assert reasons == {
        "0": "K=3 (in_channels/groups) is not a multiple of M=4",
        "1": "K=1 (in_channels/groups) is not a multiple of M=4",
        "2": None,
        "4": "K=6 (in_features) is not a multiple of M=4",
        "5": None,
    }
    assert not hasattr(model[0], "parametrizations") and hasattr(model[2], "parametrizations")
    # 1:2 masks a K of 6 but the compiler's groups of 4 would refuse it
    reason = ost.find_layers(nn.Linear(6, 4), 1, 2)[0].reason
    assert reason == "K=6 (in_features) is not a multiple of 4, which the compiler's 2:4 groups need"


def test_include_and_exclude_select_layers_by_name():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4))
    sparsifier = ost.prepare(model, exclude=("2",))
    assert [layer.name for layer in sparsifier.masked] == ["0", "1"]
    assert ost.prepare(nn.Sequential(nn.Linear(8, 8)), include=("nothing*",)).layers == []


def test_compilable_patterns():
    assert [ost.compilable(n, m) for n, m in [(2, 4), (1, 4), (1, 2), (2, 8), (1, 8)]] == [True] * 5
    assert [ost.compilable(n, m) for n, m in [(3, 4), (4, 8), (3, 6), (2, 2)]] == [False] * 4


def test_wanda_linear_norms_are_the_column_sums_of_squares():
    layer = nn.Linear(8, 4)
    batches = [torch.randn(3, 5, 8), torch.randn(2, 5, 8)]
    norms = input_norms(layer, {"l": (layer, "linear")}, batches)
    expected = sum(b.pow(2).sum(dim=(0, 1)) for b in batches)
    torch.testing.assert_close(norms["l"], expected)


def test_wanda_conv_norms_are_those_of_the_unfolded_input():
    conv = nn.Conv2d(8, 4, 3, stride=2, padding=1, dilation=2, groups=2)
    x = torch.randn(2, 8, 7, 6)
    norm2 = input_norms(conv, {"c": (conv, "conv2d")}, [x])["c"]  # [C, KH, KW]
    xp = nn.functional.pad(x, (1, 1, 1, 1))
    oh = (7 + 2 - 2 * 2 - 1) // 2 + 1
    ow = (6 + 2 - 2 * 2 - 1) // 2 + 1
    expected = torch.zeros(8, 3, 3)
    for kh, kw in itertools.product(range(3), range(3)):
        rows = [2 * i + 2 * kh for i in range(oh)]
        cols = [2 * j + 2 * kw for j in range(ow)]
        expected[:, kh, kw] = xp[:, :, rows][:, :, :, cols].pow(2).sum(dim=(0, 2, 3))
    torch.testing.assert_close(norm2, expected)
    # the score of weight[oc, c] uses input channel group(oc) * C/groups + c
    scores = ost.wanda_scores(conv.weight, conv, "conv2d", norm2)
    torch.testing.assert_close(scores[3], conv.weight[3].abs() * norm2[4:].sqrt())


def test_wanda_keeps_the_weights_of_loud_inputs_where_magnitude_does_not():
    layer = nn.Linear(8, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.2, 1.1, 1.0, 0.9] * 2] * 2))
    loud = torch.randn(64, 8) * torch.tensor([0.1, 0.1, 10.0, 10.0] * 2)
    wanda = ost.prepare(nn.Sequential(layer), method="wanda", calibration=[loud])
    assert layer.parametrizations.weight[0].mask[0].tolist() == [False, False, True, True] * 2
    wanda_layer = nn.Linear(8, 2, bias=False)
    with torch.no_grad():
        wanda_layer.weight.copy_(torch.tensor([[1.2, 1.1, 1.0, 0.9] * 2] * 2))
    ost.prepare(wanda_layer)
    assert wanda_layer.parametrizations.weight[0].mask[0].tolist() == [True, True, False, False] * 2
    assert wanda.mask_updates == 1


def test_wanda_without_calibration_says_what_it_needs():
    with pytest.raises(ValueError, match="method='wanda' needs calibration batches"):
        ost.prepare(nn.Linear(8, 4), method="wanda")


def test_bad_patterns_and_options_are_refused():
    with pytest.raises(ValueError, match="0 < N <= M"):
        ost.SparsityConfig(n=5, m=4)
    with pytest.raises(ValueError, match="SR-STE"):
        ost.SparsityConfig(srste=True, method="wanda")
    with pytest.raises(ValueError, match="method must be one of"):
        ost.SparsityConfig(method="random")


def test_masks_match_the_format_reference_pruner():
    w = torch.randn(6, 16)
    ours = ost.magnitude_mask(w, "linear")
    reference = fmt.prune_magnitude(w.numpy()) != 0
    assert np.array_equal(ours.numpy(), reference)
