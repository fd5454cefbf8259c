"""Dense vs compiled, side by side: the same inputs, threads and provider, interleaved runs.

Runs alternate between the two sessions (dense, sparse, dense, sparse, ...) so that a machine
whose load changes during the measurement slows both alike; each side's time is the median of
its runs, and the ratio is dense / sparse (above 1: the compiled model is faster).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import onnx

from .errors import OnnxSparseError
from .prune.calibration import Calibration
from .session import open_session


@dataclass
class BenchResult:
    provider: str
    threads: int
    batch_size: int
    runs: int
    dense_ms: float
    sparse_ms: float
    dense_spread_ms: float
    sparse_spread_ms: float

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.sparse_ms

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup": self.speedup}


def bench(
    original: onnx.ModelProto,
    compiled: onnx.ModelProto,
    inputs: str | None = None,
    batch_size: int = 1,
    threads: int = 0,
    runs: int = 20,
    warmup: int = 3,
    provider: str = "cpu",
) -> BenchResult:
    """Median wall time of one run of each model on the same batch."""
    if runs < 1 or warmup < 0:
        raise OnnxSparseError("--runs must be at least 1 and --warmup at least 0")
    batch = next(iter(Calibration(original, inputs, batch_size=batch_size, samples=batch_size)))
    sessions = {
        "dense": open_session(original, sparse=False, provider=provider, threads=threads),
        "sparse": open_session(compiled, sparse=True, provider=provider, threads=threads),
    }
    times: dict[str, list[float]] = {"dense": [], "sparse": []}
    try:
        for _ in range(warmup):
            for session in sessions.values():
                session.run(None, batch)
        for _ in range(runs):
            for name, session in sessions.items():
                start = time.perf_counter()
                session.run(None, batch)
                times[name].append(1e3 * (time.perf_counter() - start))
    except Exception as exc:
        raise OnnxSparseError(f"inference failed: {str(exc).splitlines()[0]}") from None

    def spread(values: list[float]) -> float:
        quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        return quartiles[2] - quartiles[0]

    return BenchResult(
        provider=provider,
        threads=threads,
        batch_size=batch_size,
        runs=runs,
        dense_ms=statistics.median(times["dense"]),
        sparse_ms=statistics.median(times["sparse"]),
        dense_spread_ms=spread(times["dense"]),
        sparse_spread_ms=spread(times["sparse"]),
    )
