"""benchmarks/cuda/kernel_profile.py without a GPU: the one-layer models it times (dense and compiled
compute the same product), its feed syntax, and one clear line where ONNX Runtime has no CUDA EP."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from conftest import REPO, library_available

sys.path.insert(0, str(REPO / "benchmarks" / "cuda"))
import kernel_profile  # noqa: E402


@pytest.mark.skipif(not library_available(), reason="the onnxsparse custom-op library is not built")
def test_layer_models_compute_the_same_product():
    from onnxsparse.session import open_session

    dense, compiled, feeds = kernel_profile.layer_models("64x48:32:bias")
    assert feeds["X"].shape == (32, 64) and feeds["X"].dtype == np.float16
    want = open_session(dense, sparse=False).run(None, feeds)[0]
    got = open_session(compiled, sparse=True).run(None, feeds)[0]
    assert got.shape == (32, 48)
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2e-2, atol=2e-2)


def test_feeds_parse():
    rng = np.random.default_rng(0)
    name, ids = kernel_profile.parse_feed("input_ids=2x7:int:50", rng)
    assert name == "input_ids" and ids.shape == (2, 7) and ids.dtype == np.int64 and ids.max() < 50
    name, x = kernel_profile.parse_feed("X=3x4:half", rng)
    assert x.dtype == np.float16 and x.shape == (3, 4)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="a CUDA EP is present")
def test_without_cuda_one_line():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cuda" / "kernel_profile.py"), "--layer",
                           "64x64:16"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2 and "no CUDAExecutionProvider" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
