"""onnxsparse.torch training: SR-STE's gradient, fixed masks, the schedule, finalize's exact zeros."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install '.[torch]')")
from torch import nn  # noqa: E402

import onnxsparse.torch as ost  # noqa: E402
from onnxsparse.torch.masks import groups_over  # noqa: E402

from conftest import REPO  # noqa: E402


def test_srste_gradient_is_straight_through_plus_decay_on_pruned_weights():
    torch.manual_seed(0)
    w = torch.randn(6, 8, requires_grad=True)
    upstream = torch.randn(6, 8)
    (ost.srste_weight(w, "linear", 2, 4, decay=0.1) * upstream).sum().backward()
    mask = ost.magnitude_mask(w, "linear")
    expected = upstream + 0.1 * (~mask) * w.detach()
    torch.testing.assert_close(w.grad, expected, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_srste_parametrization_gives_the_formula_in_a_layer(kind):
    torch.manual_seed(1)
    layer = nn.Linear(8, 4) if kind == "linear" else nn.Conv2d(8, 4, 3, padding=1)
    x = torch.randn(2, 8) if kind == "linear" else torch.randn(2, 8, 5, 5)
    dense = layer.weight.detach().clone()
    ost.prepare(layer, srste=True, decay=0.5)
    layer(x).square().sum().backward()
    grad = layer.parametrizations.weight.original.grad
    # reference: the gradient with respect to the sparse weight, plus decay * (1 - mask) * w
    mask = ost.magnitude_mask(dense, "linear" if kind == "linear" else "conv2d")
    sparse = (dense * mask).requires_grad_(True)
    op = nn.functional.linear if kind == "linear" else (lambda a, w, b: nn.functional.conv2d(a, w, b, padding=1))
    op(x, sparse, layer.bias).square().sum().backward()
    torch.testing.assert_close(grad, sparse.grad + 0.5 * (~mask) * dense)


def test_srste_mask_follows_the_weights_at_every_forward():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
    ost.prepare(layer, srste=True)
    assert layer.weight.tolist() == [[4.0, 3.0, 0.0, 0.0]]
    with torch.no_grad():
        layer.parametrizations.weight.original.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert layer.weight.tolist() == [[0.0, 0.0, 3.0, 4.0]]


def test_fixed_masks_give_pruned_weights_no_gradient():
    torch.manual_seed(2)
    layer = nn.Linear(8, 4)
    ost.prepare(layer)
    layer(torch.randn(3, 8)).sum().backward()
    mask = layer.parametrizations.weight[0].mask
    grad = layer.parametrizations.weight.original.grad
    assert (grad[~mask] == 0).all() and (grad[mask] != 0).all()


def test_schedule_dense_warmup_then_masks_and_periodic_updates():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    sparsifier = ost.prepare(model, warmup_steps=3, update_every=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    zeros = []
    for _ in range(8):
        model(torch.randn(4, 8)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        sparsifier.step()
        zeros.append(float((model[0].weight == 0).float().mean()))
    assert zeros[:2] == [0.0, 0.0] and zeros[2:] == [0.5] * 6  # masks from step 3 on
    assert sparsifier.mask_updates == 3  # at steps 3, 5 and 7
    with pytest.raises(ValueError, match="warm-up"):
        ost.prepare(nn.Linear(8, 4), warmup_steps=5).finalize()


def test_finalize_leaves_exact_zeros_and_plain_parameters():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8, 4))
    sparsifier = ost.prepare(model)
    original = model[2].parametrizations.weight.original
    with torch.no_grad():  # kept weights that are -0.0 count as zero (SPEC): still at most 2 per group
        original.copy_(-original.abs())
        kept = model[2].parametrizations.weight[0].mask
        original[0][kept[0].nonzero()[0]] = -0.0
    sparsifier.finalize()
    for module, kind in ((model[0], "conv2d"), (model[2], "linear")):
        assert type(module) in (nn.Conv2d, nn.Linear) and not hasattr(module, "parametrizations")
        assert module.onnxsparse_nm == (2, 4)
        assert groups_over(module.weight, kind, 2, 4) == 0
    w = model[2].weight.detach()
    assert model[2].weight is original  # the optimizer's parameter survives
    pruned = ~kept
    assert (w[pruned] == 0).all() and not torch.signbit(w[pruned]).any()  # +0.0, not -0.0
    assert int((w == 0).sum()) == pruned.sum() + 1  # the -0.0 kept weight is a zero too


def test_finalize_on_a_copy_leaves_the_original_model_working():
    model = nn.Sequential(nn.Linear(8, 8))
    ost.prepare(model, srste=True)
    twin = copy.deepcopy(model)
    ost.finalize(twin)
    x = torch.randn(2, 8)
    torch.testing.assert_close(model(x), twin(x))  # both forward, with the same 2:4 weight
    assert hasattr(model[0], "parametrizations") and not hasattr(twin[0], "parametrizations")


def test_masks_are_saved_in_the_state_dict():
    model = nn.Sequential(nn.Linear(8, 4))
    ost.prepare(model)
    state = model.state_dict()
    fresh = nn.Sequential(nn.Linear(8, 4))
    ost.prepare(fresh, warmup_steps=1)
    fresh.load_state_dict(state)
    x = torch.randn(2, 8)
    torch.testing.assert_close(fresh(x), model(x))


def test_without_pytorch_the_import_says_how_to_install_it():
    code = "import sys; sys.modules['torch'] = None\ntry:\n import onnxsparse.torch\nexcept ImportError as e:\n print(e)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == 'onnxsparse.torch needs PyTorch: pip install "onnxsparse[torch]"'
