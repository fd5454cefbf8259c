"""Magnitude and Wanda prune a weight a block of groups at a time (``methods._prune_layer_blocks``):
the same bytes as pruning the whole float64 ``[rows, K]`` matrix at once, and a peak memory that no
longer grows with float64 copies of the layer (issue 16, item 3)."""

from __future__ import annotations

import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import onnx
import pytest

from conftest import REPO

from onnxsparse.format import from_rows_k, keep_top, to_rows_k
from onnxsparse.prune import files
from onnxsparse.prune.capture import Statistics
from onnxsparse.prune.layers import ConvGeometry, Layer, Use
from onnxsparse.prune.linalg import quadratic_forms
from onnxsparse.prune import methods
from onnxsparse.prune.methods import keep_mask, prune_layer, prune_matrix
from onnxsparse.prune.pruner import PruneOptions


def awkward(shape, dtype, seed):
    """Weights with ties (few distinct magnitudes), both zeros, NaN and infinities."""
    rng = np.random.default_rng(seed)
    values = rng.integers(-3, 4, size=shape).astype(np.float64) * 0.5
    flat = values.reshape(-1)
    picks = rng.choice(flat.size, size=max(4, flat.size // 50), replace=False)
    specials = np.array([-0.0, np.nan, np.inf, -np.inf, 7.25, -7.25])
    flat[picks] = specials[np.arange(picks.size) % specials.size]
    return values.astype(dtype)


def unchunked(layer, weight, hessians, method, n, m):
    """The pruner's earlier path: the whole layer as one float64 [rows, K] matrix per Conv group."""
    dense = to_rows_k(weight.astype(np.float64), layer.layout)
    pruned = np.empty_like(dense)
    per_group = dense.shape[0] // layer.groups
    for g in range(layer.groups):
        rows = slice(g * per_group, (g + 1) * per_group)
        pruned[rows] = prune_matrix(method, dense[rows], None if hessians is None else hessians[g], n, m)
    return from_rows_k(pruned, layer.layout, layer.shape).astype(weight.dtype), dense, pruned


def layer_of(layout, shape, dtype, groups=1):
    if layout == "oihw":
        geometry = ConvGeometry((shape[2], shape[3]), (1, 1), (0, 0, 0, 0), (1, 1), groups, "NOTSET")
        return Layer("w", shape, np.dtype(dtype), layout, [Use("conv", "Conv", "x", layout, conv=geometry)])
    return Layer("w", shape, np.dtype(dtype), layout, [Use("fc", "Gemm" if layout == "nk" else "MatMul", "x", layout)])


def hessian_stats(k, groups, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((groups, 3 * k, k))
    x[:, :, 1] = 0.0  # an input that never fires: its norm is 0, every score of that column 0
    return Statistics(hessian=np.einsum("gri,grj->gij", x, x), rows=3 * k)


@pytest.mark.parametrize("layout,shape,groups", [
    ("kn", (48, 20), 1), ("kn", (16, 1), 1), ("nk", (13, 40), 1), ("oihw", (8, 4, 2, 2), 2), ("oihw", (6, 8, 1, 1), 1),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.float64])
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (2, 8)])
@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_blocks_give_the_bytes_of_the_whole_matrix(monkeypatch, layout, shape, groups, dtype, n, m, method):
    layer = layer_of(layout, shape, dtype, groups)
    k = int(np.prod(shape[1:])) if layout != "kn" else shape[0]
    if k % m:
        pytest.skip(f"K={k} is not a multiple of {m}")
    weight = awkward(shape, dtype, seed=len(shape) * 7 + n + m)
    stats = hessian_stats(k, groups, seed=m) if method == "wanda" else None
    expected, dense, pruned = unchunked(layer, weight, None if stats is None else stats.mean(), method, n, m)
    for block in (1, 5, 64, 1 << 20):  # one group per block, ragged blocks, whole matrix
        monkeypatch.setattr(methods, "BLOCK_ELEMENTS", block)
        out, result = prune_layer(layer, weight, stats, PruneOptions(method=method, n=n, m=m, device="numpy"))
        assert out.dtype == weight.dtype and out.shape == weight.shape
        assert out.tobytes() == expected.tobytes(), (block, out, expected)
        total = np.abs(dense).sum()
        assert result.retained == pytest.approx(np.abs(pruned).sum() / total, rel=1e-12, nan_ok=True)
        assert result.compliant == 1.0


def test_blocks_on_finite_weights_give_the_layer_error_of_the_whole_matrix(monkeypatch):
    """Wanda's layer error summed over blocks of rows equals the whole matrix's (kn: blocks of columns of W)."""
    rng = np.random.default_rng(5)
    for layout, shape in (("kn", (64, 24)), ("nk", (24, 64))):
        layer = layer_of(layout, shape, np.float32)
        weight = rng.standard_normal(shape).astype(np.float32)
        stats = hessian_stats(64, 1, seed=9)
        expected, dense, pruned = unchunked(layer, weight, stats.mean(), "wanda", 2, 4)
        energy, total = quadratic_forms(pruned, dense, stats.mean()[0], "numpy")
        monkeypatch.setattr(methods, "BLOCK_ELEMENTS", 100)  # a block of rows is 1 row of K = 64
        out, result = prune_layer(layer, weight, stats, PruneOptions(method="wanda", device="numpy"))
        assert np.array_equal(out, expected)
        assert result.layer_error == pytest.approx(np.sqrt(energy / total), rel=1e-5) and result.layer_error > 0


def test_keep_mask_is_keep_top():
    rng = np.random.default_rng(2)
    for m, n in ((4, 2), (4, 1), (4, 3), (8, 2), (2, 1)):
        scores = np.abs(rng.integers(-2, 3, size=(50, 8 * m)).astype(np.float64))  # many ties
        scores[rng.random(scores.shape) < 0.05] = np.nan
        scores[rng.random(scores.shape) < 0.02] = np.inf
        expected = keep_top(scores, n, m)
        grouped = scores.reshape(50, 8, m)
        assert np.array_equal(keep_mask(grouped, n, 2).reshape(50, -1), expected)
        assert np.array_equal(keep_mask(np.ascontiguousarray(grouped.transpose(0, 2, 1)), n, 1),
                              expected.reshape(50, 8, m).transpose(0, 2, 1))
        assert (keep_mask(grouped, n, 2).sum(-1) == n).all()


# Prunes a model through the CLI and prints its peak RSS (bytes), and the peak after the imports.
_RUNNER = """
import resource, sys
import numpy, onnx, onnxsparse.cli, onnxsparse.commands.prune, onnxsparse.prune
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
from onnxsparse.cli import main
status = main(sys.argv[1:])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(f"RESULT {status or 0} {base} {peak}", file=sys.stderr)
"""


def test_magnitude_prune_peak_memory_is_a_few_copies_of_the_largest_tensor(tmp_path):
    """A 90 MB fp32 model (two 2048 x 5504 MatMuls, 45 MB each): pruning it holds the layer read,
    its pruned form and the previous layer's (about 3x the largest tensor) plus block temporaries.
    The whole-matrix float64 path held about 10x (the float64 copy, |w|, the sort's indexes, ...)."""
    from models.big_model import write_big_model

    source = tmp_path / "m.onnx"
    write_big_model(source, layers=2, hidden=2048, ffn=5504, dtype="float32")
    largest = 2048 * 5504 * 4
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _RUNNER, "prune", str(source), "-o", str(tmp_path / "p.onnx"),
                           "--prune-head", "-q"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    _, status, base, peak = proc.stderr.strip().splitlines()[-1].split()
    grown = int(peak) - int(base)
    assert int(status) == 0
    assert grown < 4 * largest, f"pruning grew the peak RSS by {grown / 2**20:.0f} MiB ({grown / largest:.1f}x the largest tensor)"
    pruned = onnx.load(tmp_path / "p.onnx")
    for tensor in pruned.graph.initializer:
        values = onnx.numpy_helper.to_array(tensor)
        assert (np.count_nonzero(values.reshape(-1, 4, values.shape[1]), axis=1) <= 2).all()
    # Every pruned weight was in the scratch file, which became the output's data file as it was.
    assert (tmp_path / "p.onnx.data").stat().st_size == 2 * largest


def test_scratch_file_with_other_data_is_copied_not_renamed(tmp_path):
    """The scratch file becomes the output's data file only when it holds exactly the model's weights:
    a weight written twice leaves dead bytes, and the output is then written tensor by tensor."""
    from test_prune_files import chain

    path = chain(tmp_path)
    with files.open_model(path, tmp_path / "o.onnx") as (model, store):
        w0 = next(t for t in model.graph.initializer if t.name == "w0")
        first = store.read(w0)
        store.write(w0, np.zeros_like(first))
        store.write(w0, first * 2)  # the first write's bytes are dead now
        assert not store.holds_only([w0])
        files.save(model, tmp_path / "o.onnx", store, inputs=[path])
    saved = onnx.load(tmp_path / "o.onnx")
    found = {t.name: onnx.numpy_helper.to_array(t) for t in saved.graph.initializer}
    assert np.array_equal(found["w0"], first * 2)
    sizes = sum(v.nbytes for name, v in found.items() if name.startswith("w"))
    assert (tmp_path / "o.onnx.data").stat().st_size < sizes + 3 * files.ALIGN  # no dead bytes


def test_head_left_dense_is_appended_to_the_renamed_scratch_file(tmp_path):
    from test_prune_files import chain

    path = chain(tmp_path)
    out = tmp_path / "p.onnx"
    proc = subprocess.run([sys.executable, "-m", "onnxsparse", "prune", str(path), "-o", str(out), "-q"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    source = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    saved = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
    assert np.array_equal(saved["w2"], source["w2"])  # the head, dense, copied from the source
    for name in ("w0", "w1"):
        assert not np.array_equal(saved[name], source[name])
        assert (np.count_nonzero(saved[name].reshape(-1, 4, saved[name].shape[1]), axis=1) <= 2).all()


def test_sessions_get_every_pruned_weight_as_a_mapped_initializer(tmp_path):
    """The graph handed to ONNX Runtime never embeds a pruned weight of the main graph (a 2.9 GB model's
    would pass protobuf's 2 GB limit): each is fed mapped from the scratch file, every time."""
    from test_prune_files import chain

    path = chain(tmp_path)
    with files.open_model(path, tmp_path / "o.onnx") as (model, store):
        for tensor in model.graph.initializer:
            if files.is_external(tensor):
                store.write(tensor, store.read(tensor) * 0.5)
        for _ in range(20):
            serialized, _, keep = store.session_source(model)
            graph = onnx.load_from_string(serialized).graph
            assert all(files.is_external(t) and not t.raw_data for t in graph.initializer if t.name.startswith("w"))
            assert len(keep) == 2 * 3  # three weights, each a map and its OrtValue
