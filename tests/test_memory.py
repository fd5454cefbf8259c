"""Session memory (issue 19, item 6): a compiled model's session holds no more than the dense one's.

Each session lives in a fresh subprocess (benchmarks/memory.py): VmRSS after a run minus VmRSS
after importing ONNX Runtime. The model is 4 MatMuls of 2048 x 2048 fp32 (64 MiB dense), weights
embedded and in an external data file (which ONNX Runtime memory-maps: the kernels then drop the
mapped compressed pair once packed, cpu/release_pages.h)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import REPO, once_per_run

sys.path.insert(0, str(REPO / "benchmarks"))

import memory  # noqa: E402

import onnxsparse  # noqa: E402
from onnxsparse.api import compile_model  # noqa: E402
from onnxsparse.io import save_model  # noqa: E402

pytestmark = pytest.mark.kernels
MIB = 1 << 20
SLACK = 4 * MIB  # allocator and thread-pool noise between two processes


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    def measure():
        folder = tmp_path_factory.mktemp("memory")
        return memory.measure(memory.chain_model(4, 2048), folder, onnxsparse.get_library_path())

    return once_per_run(tmp_path_factory, "session_memory", measure)  # about 15 s: once, not per xdist worker


@pytest.mark.parametrize("kind", ["embedded", "external"])
def test_compiled_session_not_larger_than_dense(measured, kind):
    dense, compiled = measured[f"dense {kind}"]["rss"], measured[f"compiled {kind}"]["rss"]
    assert dense > 40 * MIB, "the dense session should hold its 64 MiB of weights"
    assert compiled <= dense + SLACK, f"compiled {compiled / MIB:.1f} MiB > dense {dense / MIB:.1f} MiB"


def test_external_compressed_pair_is_released(measured):
    """Packed copy only: 9/16 of the dense weights (36 MiB) plus what ONNX Runtime holds besides,
    well under packed + compressed (70 MiB of weights) as before the pages were dropped."""
    assert measured["compiled external"]["rss"] < 56 * MIB


def test_released_pages_read_back_from_the_file(tmp_path):
    """After the drop, results are unchanged, also where the NaN fix-up re-reads the index."""
    import onnxruntime as ort

    model = memory.chain_model(2, 256)
    compiled = compile_model(model).model
    embedded, external = tmp_path / "embedded.onnx", tmp_path / "external.onnx"
    save_model(compiled, embedded, external_data=False)
    save_model(compiled, external, external_data=True)
    x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    x_nan = x.copy()
    x_nan[0, 7] = np.nan
    outs = {}
    for name, path in (("embedded", embedded), ("external", external)):
        session = onnxsparse.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs[name] = [session.run(None, {"x": feed})[0] for feed in (x, x_nan)]
    dense = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for a, b in zip(outs["embedded"], outs["external"]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(outs["external"][0], dense.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)
    assert np.array_equal(np.isnan(outs["external"][1]), np.isnan(dense.run(None, {"x": x_nan})[0]))
