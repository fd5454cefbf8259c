"""SparseGPT on torch (CPU) gives numpy's masks and values up to float rounding (float64), and the same
masks with values close in its default float32; the layer error's blocked quadratic form equals the
direct one; --device is checked."""

from __future__ import annotations

import numpy as np
import pytest

from onnxsparse.errors import OnnxSparseError
from onnxsparse.prune import PruneOptions
from onnxsparse.prune.capture import Statistics
from onnxsparse.prune.layers import Layer, Use
from onnxsparse.prune.linalg import resolve_device
from onnxsparse.prune.methods import prune_layer, sparsegpt

torch = pytest.importorskip("torch", reason="torch is the optional extra onnxsparse[torch]")
from onnxsparse.prune.linalg import _symmetric_form, quadratic_forms, sparsegpt_torch  # noqa: E402


def hessian(k: int, rows: int = 512, seed: int = 0, dead: int = 0) -> np.ndarray:
    """X^T X / rows of correlated inputs (low rank plus noise); ``dead`` inputs never fire."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 8)) @ rng.standard_normal((8, k)) + 0.05 * rng.standard_normal((rows, k))
    x[:, :dead] = 0
    return x.T @ x / rows


@pytest.mark.parametrize("rows, k, block, damp, dead", [(64, 256, 128, 0.01, 0), (48, 200, 64, 0.1, 3),
                                                         (32, 96, 128, 0.01, 0), (16, 64, 8, 0.0, 0)])
def test_torch_sparsegpt_matches_numpy(rows, k, block, damp, dead):
    rng = np.random.default_rng(rows + k)
    weight = rng.standard_normal((rows, k))
    h = hessian(k, dead=dead)
    expected = sparsegpt(weight, h, 2, 4, block, damp)
    found = sparsegpt_torch(weight, h, 2, 4, block, damp, "cpu", dtype="float64")
    assert np.array_equal(expected != 0, found != 0)  # the same 2:4 masks
    assert np.allclose(found, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
    assert not np.allclose(found, np.where(found != 0, weight, 0))  # the kept weights were updated
    single = sparsegpt_torch(weight, h, 2, 4, block, damp, "cpu")  # the default: float32
    assert np.array_equal(expected != 0, single != 0)
    assert np.allclose(single, expected, rtol=0, atol=1e-3 * np.abs(expected).max())
    assert not np.array_equal(single, found)  # it did run in float32


def test_torch_sparsegpt_blocks_agree():
    """The block size changes where the earlier blocks' updates are applied, not the result."""
    rng = np.random.default_rng(7)
    weight = rng.standard_normal((24, 160))
    h = hessian(160, seed=4)
    results = [sparsegpt_torch(weight, h, 2, 4, block, 0.01, "cpu", dtype="float64") for block in (4, 12, 64, 160)]
    for other in results[1:]:
        assert np.array_equal(results[0] != 0, other != 0)
        assert np.allclose(other, results[0], rtol=1e-9, atol=1e-9 * np.abs(results[0]).max())


@pytest.mark.parametrize("k, block", [(100, 32), (64, 64), (70, 1024)])
def test_blocked_quadratic_form_matches_the_direct_one(k, block):
    rng = np.random.default_rng(k)
    a = rng.standard_normal((9, k))
    h = hessian(k, seed=k)
    direct = float(np.sum((a @ h) * a))
    assert _symmetric_form(a, h, np.sum, block=block) == pytest.approx(direct, rel=1e-12)
    pruned = np.where(rng.random(a.shape) < 0.5, 0.0, a)
    for device in ("numpy", "cpu"):
        energy, total = quadratic_forms(pruned, a, h, device)
        assert energy == pytest.approx(float(np.sum(((pruned - a) @ h) * (pruned - a))), rel=1e-4)
        assert total == pytest.approx(direct, rel=1e-4)


def test_prune_layer_on_torch_and_numpy_agree():
    """The whole layer path (Conv groups, layer error) on both backends."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)  # OIHW, group 2: K = 3*3*8
    from onnxsparse.prune.layers import ConvGeometry

    geometry = ConvGeometry((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2, "NOTSET")
    layer = Layer("w", weight.shape, np.dtype(np.float32), "oihw",
                  [Use("conv", "Conv", "x", "oihw", conv=geometry)])
    stats = Statistics(hessian=np.stack([hessian(72, seed=s) for s in (1, 2)]) * 100, rows=100)
    outs = {}
    for device in ("numpy", "cpu"):
        options = PruneOptions(method="sparsegpt", device=device)
        outs[device] = prune_layer(layer, weight, stats, options)
    (a, ra), (b, rb) = outs["numpy"], outs["cpu"]
    assert np.array_equal(a != 0, b != 0)  # torch works in float32: values within 1e-3 of the largest
    assert np.allclose(a, b, rtol=0, atol=1e-3 * np.abs(a).max()) and not np.array_equal(a, b)
    assert ra.layer_error == pytest.approx(rb.layer_error, rel=1e-4) and ra.compliant == rb.compliant == 1.0


def test_device_values():
    assert resolve_device("numpy") == "numpy"
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(OnnxSparseError, match="unknown --device"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a CUDA GPU")
def test_device_cuda_without_a_gpu_is_refused_before_any_work():
    with pytest.raises(OnnxSparseError, match="--device cuda: torch sees no CUDA GPU"):
        PruneOptions(method="sparsegpt", device="cuda").validate()
    PruneOptions(method="magnitude", device="cuda").validate()  # magnitude has no linear algebra to place
