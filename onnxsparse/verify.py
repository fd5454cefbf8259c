"""Numerics of a compiled model against its original: same inputs, every output compared.

The original runs on ONNX Runtime's own kernels; the compiled model runs with the onnxsparse
library registered. Per output: the largest absolute difference, the relative L2 error
``||compiled - original|| / ||original||`` and the cosine similarity. An output passes when its
relative L2 error is within the tolerance of its dtype (products of 2:4 kernels accumulate in a
different order than dense ones, and fp16/bf16 round differently between ops) and neither side
holds a NaN the other does not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx

from .errors import OnnxSparseError
from .metrics import ErrorSums
from .prune.calibration import Calibration
from .session import open_session

# Relative L2 error allowed per output dtype.
TOLERANCE = {"float32": 1e-4, "float64": 1e-6, "float16": 1e-2, "bfloat16": 5e-2}


@dataclass
class OutputCheck:
    name: str
    dtype: str
    shape: list[int]
    max_abs: float
    rel_l2: float
    cosine: float
    tolerance: float
    passed: bool


def _compare(name: str, expected: np.ndarray, actual: np.ndarray, tolerance: float | None) -> OutputCheck:
    dtype = str(expected.dtype)
    if expected.shape != actual.shape:
        raise OnnxSparseError(f"output '{name}': shapes differ ({list(actual.shape)} vs {list(expected.shape)})")
    sums = ErrorSums().add(expected, actual)
    tol = TOLERANCE.get(dtype, 1e-4) if tolerance is None else tolerance
    passed = sums.rel_l2 <= tol and not sums.nan_mismatch
    return OutputCheck(name, dtype, list(expected.shape), sums.max_abs, sums.rel_l2, sums.cosine, tol, passed)


def verify(
    original: onnx.ModelProto,
    compiled: onnx.ModelProto,
    inputs: str | None = None,
    samples: int = 4,
    batch_size: int = 1,
    tolerance: float | None = None,
    provider: str = "cpu",
) -> list[OutputCheck]:
    """Run both models on the same inputs and compare every output (worst over all batches)."""
    dense = open_session(original, sparse=False, provider=provider)
    sparse = open_session(compiled, sparse=True, provider=provider)
    names = [o.name for o in dense.get_outputs()]
    if names != [o.name for o in sparse.get_outputs()]:
        raise OnnxSparseError("the two models have different outputs; is the second compiled from the first?")
    worst: dict[str, OutputCheck] = {}
    for batch in Calibration(original, inputs, batch_size=batch_size, samples=samples):
        try:
            expected = dense.run(None, batch)
            actual = sparse.run(None, batch)
        except Exception as exc:
            raise OnnxSparseError(f"inference failed: {str(exc).splitlines()[0]}") from None
        for name, exp, act in zip(names, expected, actual):
            check = _compare(name, np.asarray(exp), np.asarray(act), tolerance)
            if name not in worst or check.rel_l2 > worst[name].rel_l2 or not check.passed:
                worst[name] = check
    return [worst[name] for name in names]


def to_dict(checks: list[OutputCheck]) -> dict:
    return {"passed": all(c.passed for c in checks), "outputs": [asdict(c) for c in checks]}
