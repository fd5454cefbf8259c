"""Shared test helpers: models from ONNX text, 2:4 weights, and the custom-op library switch.

Tests marked ``kernels`` run the compiled models in ONNX Runtime with the custom-op library. They
run whenever the library is found (``ONNXSPARSE_LIBRARY``, the development build ``build/dev/`` of
DEVELOPERS.md, or ``get_library_path``). Without it they are skipped with that reason locally, but
in CI (``CI`` set) they run and fail: CI always installs it. A test module that runs the kernels
throughout sets ``pytestmark = pytest.mark.kernels``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the checkout's onnxsparse, also when it is not installed

_LOCAL_BUILD = REPO / "build" / "dev" / "libonnxsparse_ops.so"
if "ONNXSPARSE_LIBRARY" not in os.environ and _LOCAL_BUILD.is_file():
    os.environ["ONNXSPARSE_LIBRARY"] = str(_LOCAL_BUILD)

from onnxsparse import OnnxSparseError, get_library_path  # noqa: E402
from onnxsparse import format as fmt  # noqa: E402

# The CPU kernel paths and what each needs from the processor (cpuid flags as /proc/cpuinfo spells them).
ISA_FLAGS = {
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma", "f16c"},
    "avx2": {"avx2", "fma", "f16c"},
    "portable": set(),
}


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


CPU_FLAGS = cpu_flags()


def force_cpu_isa(isa: str, monkeypatch) -> str:
    """Forces the kernels onto one instruction-set path, or skips the test naming what the CPU lacks."""
    missing = ISA_FLAGS[isa] - CPU_FLAGS
    if missing:
        pytest.skip(f"this processor lacks {', '.join(sorted(missing))} for the {isa} kernels")
    monkeypatch.setenv("ONNXSPARSE_CPU_ISA", isa)
    return isa


DTYPES = {"float": np.float32, "float16": np.float16, "bfloat16": onnx.helper.tensor_dtype_to_np_dtype(16)}


def make_model(text: str, **initializers: np.ndarray) -> onnx.ModelProto:
    """A model from ONNX text, plus initializers given as arrays (names as keywords)."""
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend(onnx.numpy_helper.from_array(a, name) for name, a in initializers.items())
    return model


HEAD = '<ir_version: 10, opset_import: ["" : 17]>'


def model_with_weight_in_subgraph() -> onnx.ModelProto:
    """A 2:4 weight W read by a MatMul in the main graph and by one inside an If's then-branch."""
    return make_model(
        f"""{HEAD} g (float[2,8] x, bool c) => (float[2,4] y, float[2,4] z) {{
        y = MatMul(x, W)
        z = If(c) <then_branch = t () => (float[2,4] zt) {{ zt = MatMul(x, W) }},
                    else_branch = e () => (float[2,4] ze) {{ ze = Identity(y) }}>
        }}""",
        W=sparse_weight((8, 4), "kn"),
    )


def sparse_weight(shape, layout: str, dtype=np.float32, seed: int = 0) -> np.ndarray:
    """A random weight magnitude-pruned to 2:4 along SPEC's axis for ``layout``."""
    dense = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return fmt.prune_weight_magnitude(dense, layout).astype(dtype)


def random_input(shape, dtype=np.float32, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32).astype(dtype)


def library_available() -> bool:
    try:
        get_library_path()
    except OnnxSparseError:
        return False
    return True


def cuda_reason() -> str | None:
    """Why the CUDA kernels cannot run here (None when they can): no CUDA execution provider in
    the installed onnxruntime, or no custom-op library."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu on a GPU machine)"
    if not library_available():
        return "the onnxsparse custom-op library is not built"
    return None


def once_per_run(tmp_path_factory, name: str, compute):
    """``compute()``'s JSON-able result, computed once for the whole test run.

    Under pytest-xdist each worker is a process with its own fixtures, so a module fixture runs in
    every worker that gets one of the module's tests. The first worker to arrive computes and
    stores the result in the run's shared temporary folder under a lock; the others wait and read
    it. Without xdist it is just ``compute()``."""
    import fcntl
    import json

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return compute()
    shared = tmp_path_factory.getbasetemp().parent  # one folder for all workers of this run
    result = shared / f"{name}.json"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if result.is_file():
            return json.loads(result.read_text())
        value = compute()
        result.write_text(json.dumps(value))
        return value


def pytest_configure(config):
    config.addinivalue_line("markers", "kernels: runs compiled models in ONNX Runtime with the custom-op library")


def pytest_collection_modifyitems(config, items):
    if library_available() or os.environ.get("CI"):
        return
    skip = pytest.mark.skip(reason="custom-op library not built (build it or set ONNXSPARSE_LIBRARY); in CI this fails")
    for item in items:
        if "kernels" in item.keywords:
            item.add_marker(skip)
