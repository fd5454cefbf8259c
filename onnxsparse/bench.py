"""Dense vs compiled, side by side: the same inputs, threads and provider, interleaved runs.

Runs alternate between the two sessions (dense, sparse, dense, sparse, ...) so that a machine
whose load changes during the measurement slows both alike; each side's time is the median of
its runs, and the ratio is dense / sparse (above 1: the compiled model is faster). The spread is
reported with it: each side's interquartile range, and the quartiles of the per-pair ratios
(each dense run over the compiled run beside it). When either is wide the figure is flagged as
untrustworthy (``BenchResult.warnings``), with what to do.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field

import onnx

from .errors import OnnxSparseError
from .prune.calibration import Calibration
from .session import open_session, ort_message, quiet_run_options

# A side whose IQR exceeds this share of its median, or per-pair ratios whose IQR exceeds this
# share of their median, make the result too noisy to trust.
NOISY_SHARE = 0.10


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
    speedup_low: float = 0.0  # first quartile of the per-pair ratios
    speedup_high: float = 0.0  # third quartile
    execution_provider: str = ""  # the provider the compiled session runs on
    cpu_isa: str | None = None  # the CPU kernels' path (None when not on CPU or not known)
    warnings: list[str] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.dense_ms / self.sparse_ms

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup": self.speedup}


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def bench(
    original: onnx.ModelProto | str | os.PathLike,
    compiled: onnx.ModelProto | str | os.PathLike,
    inputs: str | None = None,
    batch_size: int = 1,
    threads: int = 0,
    runs: int = 20,
    warmup: int = 3,
    provider: str = "cpu",
    seed: int = 0,
    shapes: dict[str, list[int]] | None = None,
    int_range: tuple[int, int] | None = None,
) -> BenchResult:
    """Median wall time of one run of each model on the same batch (models: paths or ``ModelProto``s)."""
    if runs < 1 or warmup < 0:
        raise OnnxSparseError("--runs must be at least 1 and --warmup at least 0")
    if batch_size < 1:
        raise OnnxSparseError("--batch-size must be at least 1")
    if threads < 0:
        raise OnnxSparseError("--threads must be 0 (all cores) or more")
    graph = original
    if not isinstance(original, onnx.ModelProto):
        from .io import load_model_graph

        graph = load_model_graph(original)
    batches = Calibration(graph, inputs, batch_size=batch_size, samples=batch_size, seed=seed, shapes=shapes,
                          int_range=int_range)
    batch = next(iter(batches), None)
    if batch is None:
        raise OnnxSparseError("no input batch to time")
    sessions = {
        "dense": open_session(original, sparse=False, provider=provider, quiet=True, threads=threads),
        "sparse": open_session(compiled, sparse=True, provider=provider, quiet=True, threads=threads),
    }
    times: dict[str, list[float]] = {"dense": [], "sparse": []}
    run = quiet_run_options()
    try:
        for _ in range(warmup):
            for session in sessions.values():
                session.run(None, batch, run)
        for _ in range(runs):
            for name, session in sessions.items():
                start = time.perf_counter()
                session.run(None, batch, run)
                times[name].append(1e3 * (time.perf_counter() - start))
    except Exception as exc:
        raise OnnxSparseError(f"inference failed: {ort_message(exc)}") from None

    dense_q, sparse_q = _quartiles(times["dense"]), _quartiles(times["sparse"])
    ratios = [d / s for d, s in zip(times["dense"], times["sparse"]) if s > 0]
    low, high = _quartiles(ratios) if ratios else (0.0, 0.0)
    result = BenchResult(
        provider=provider,
        threads=threads,
        batch_size=batch_size,
        runs=runs,
        dense_ms=statistics.median(times["dense"]),
        sparse_ms=statistics.median(times["sparse"]),
        dense_spread_ms=dense_q[1] - dense_q[0],
        sparse_spread_ms=sparse_q[1] - sparse_q[0],
        speedup_low=low,
        speedup_high=high,
        execution_provider=sessions["sparse"].get_providers()[0],
    )
    if result.execution_provider == "CPUExecutionProvider":
        result.cpu_isa = _cpu_isa()
    result.warnings = spread_warnings(result, ratios)
    return result


def _cpu_isa() -> str | None:
    try:
        from .hardware import library_cpu_isa

        return library_cpu_isa()
    except Exception:  # the path is reported when known; timing does not depend on it
        return None


def spread_warnings(result: BenchResult, ratios: list[float]) -> list[str]:
    """Why the figures are not to be trusted, if they are not."""
    found = []
    for side, median, spread in (("dense", result.dense_ms, result.dense_spread_ms),
                                 ("compiled", result.sparse_ms, result.sparse_spread_ms)):
        if median > 0 and spread > NOISY_SHARE * median:
            found.append(f"the {side} times vary by {100 * spread / median:.0f}% of their median (IQR)")
    if ratios:
        middle = statistics.median(ratios)
        if middle > 0 and result.speedup_high - result.speedup_low > NOISY_SHARE * middle:
            found.append(f"the per-run speedup ranges {result.speedup_low:.2f}x-{result.speedup_high:.2f}x (IQR)")
        if result.speedup_low < 1 < result.speedup_high:
            found.append("some runs are faster dense, others compiled")
    if result.runs < 5:
        found.append(f"only {result.runs} runs")
    if found:
        found.append("too noisy to trust: use more --runs, fewer --threads than cores, and a quiet machine")
    return found
