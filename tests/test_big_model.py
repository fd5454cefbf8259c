"""A model over 2 GB through check -> compile -> verify, in bounded memory (issue 16, item 4).

``models/big_model.py`` writes 12 MatMuls of 4096 x 11008 / 11008 x 4096 fp32, 2:4 (2.16 GB of
weights, over protobuf's 2 GiB limit; the largest tensor 180 MB) tensor by tensor into a temporary
folder, which is removed afterwards. Each command runs in its own process, which reports its peak
resident memory (``resource.getrusage``) when it exits: check and compile stream, so theirs must
stay under twice the largest tensor plus 1 GB, whatever the model's size; so must a magnitude
``prune``, which reads, prunes and writes one layer at a time.

CI runs it (about 2 minutes on 2 cores; up to 5.6 GB of disk: the model, its compiled and its pruned forms). Locally, ``ONNXSPARSE_SKIP_BIG=1``
skips it (DEVELOPERS.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO

from models.big_model import model_bytes, write_big_model

LAYERS, HIDDEN, FFN = 12, 4096, 11008
LARGEST = HIDDEN * FFN * 4
GB = 1 << 30
STREAMING_LIMIT = 2 * LARGEST + GB  # issue 16's target for check and compile
DISK_NEEDED = 6 * GB  # the model, its compiled and its pruned forms, with room to spare

_SKIP = os.environ.get("ONNXSPARSE_SKIP_BIG", "") not in ("", "0")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.kernels,  # verify runs the compiled model with the custom-op library
    pytest.mark.skipif(_SKIP, reason="ONNXSPARSE_SKIP_BIG is set: the 2.2 GB model test is skipped (CI runs it)"),
]

# Runs one CLI command and prints its exit status and peak RSS (bytes) as the last line of stderr.
_RUNNER = """
import resource, sys
from onnxsparse.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exc:
    status = exc.code
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(f"RESULT {int(status or 0)} {peak}", file=sys.stderr)
sys.exit(int(status or 0))
"""


def _run(*args) -> tuple[subprocess.CompletedProcess, int, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RUNNER, *map(str, args)], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    assert last.startswith("RESULT "), f"{args[0]} did not finish: {proc.stderr[-2000:]}"
    status, peak = map(int, last.split()[1:])
    assert status == proc.returncode
    return proc, peak, seconds


@pytest.fixture(scope="module")
def big_model():
    base = Path(tempfile.gettempdir())
    free = shutil.disk_usage(base).free
    if free < DISK_NEEDED:
        pytest.skip(f"{free / GB:.1f} GiB free in {base}; the 2.2 GB model and its compiled form need {DISK_NEEDED / GB:.0f}")
    folder = Path(tempfile.mkdtemp(prefix="onnxsparse-big-", dir=base))
    try:
        start = time.perf_counter()
        written = write_big_model(folder / "big.onnx", layers=LAYERS, hidden=HIDDEN, ffn=FFN)
        print(f"\ngenerated {sum(p.stat().st_size for p in written) / 1e9:.2f} GB in {time.perf_counter() - start:.1f} s")
        yield written[0]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_generated_model_is_over_2_gb(big_model):
    assert model_bytes(LAYERS, HIDDEN, FFN) > 2**31
    assert (big_model.parent / "big.onnx.data").stat().st_size == model_bytes(LAYERS, HIDDEN, FFN)
    assert big_model.stat().st_size < 1 << 20  # the graph only


def test_check_compile_verify_in_bounded_memory(big_model):
    compiled = big_model.with_name("big.sparse.onnx")

    proc, peak, seconds = _run("check", big_model, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["eligible"], report["total"]) == (LAYERS, LAYERS)
    assert all(layer["share"] == 1.0 for layer in report["layers"])
    print(f"check: {seconds:.1f} s, peak RSS {peak / GB:.2f} GiB")
    assert peak < STREAMING_LIMIT, f"check peaked at {peak / GB:.2f} GiB (limit {STREAMING_LIMIT / GB:.2f})"

    proc, peak, seconds = _run("compile", big_model, "-o", compiled, "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["rewritten"] == LAYERS
    assert result["weight_bytes_before"] == model_bytes(LAYERS, HIDDEN, FFN)
    # values (half of the dense bytes) and index (a nibble per group of 4 fp32)
    assert result["weight_bytes_after"] == model_bytes(LAYERS, HIDDEN, FFN) // 2 + model_bytes(LAYERS, HIDDEN, FFN) // 32
    data = compiled.with_name("big.sparse.onnx.data")
    assert data.stat().st_size >= result["weight_bytes_after"]
    print(f"compile: {seconds:.1f} s, peak RSS {peak / GB:.2f} GiB")
    assert peak < STREAMING_LIMIT, f"compile peaked at {peak / GB:.2f} GiB (limit {STREAMING_LIMIT / GB:.2f})"
    assert not [p.name for p in compiled.parent.iterdir() if p.name.startswith(".onnxsparse-staging")]

    proc, peak, seconds = _run("verify", big_model, compiled, "--samples", "1", "--json", "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = json.loads(proc.stdout)
    assert checks["passed"]
    assert [output["name"] for output in checks["outputs"]] == ["y"]
    print(f"verify: {seconds:.1f} s, peak RSS {peak / GB:.2f} GiB")
    # Two sessions: ONNX Runtime maps the dense weights and the compressed ones (their pages count
    # once touched) and the kernels pack a copy of the compressed ones; nothing more than that.
    dense, sparse = model_bytes(LAYERS, HIDDEN, FFN), result["weight_bytes_after"]
    assert peak < dense + 2 * sparse + GB, f"verify peaked at {peak / GB:.2f} GiB"


def test_magnitude_prune_in_bounded_memory(big_model):
    pruned = big_model.with_name("big.pruned.onnx")
    try:
        proc, peak, seconds = _run("prune", big_model, "-o", pruned, "--prune-head", "--json", "-q")
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert len(report["layers"]) == LAYERS
        assert all(layer["compliant_groups"] == 1.0 for layer in report["layers"])
        data = pruned.with_name("big.pruned.onnx.data")
        assert report["written"] == [str(data), str(pruned)]
        assert data.stat().st_size == model_bytes(LAYERS, HIDDEN, FFN)  # the pruned weights, nothing else
        print(f"prune (magnitude): {seconds:.1f} s, peak RSS {peak / GB:.2f} GiB")
        assert peak < STREAMING_LIMIT, f"prune peaked at {peak / GB:.2f} GiB (limit {STREAMING_LIMIT / GB:.2f})"
    finally:
        for path in (pruned, pruned.with_name("big.pruned.onnx.data")):
            path.unlink(missing_ok=True)
