"""Timing dense against sparse on this machine: interleaved runs, medians, the spread of the ratio.

Both sessions get the same options (threads, optimization level, the library registered), and the
runs alternate in ABBA order (dense, sparse, sparse, dense, ...) so that a machine whose load
changes during the measurement slows both alike and neither side always runs second. The result is
the ratio of the two sides' medians (dense / sparse); its spread is the interquartile range of that
same ratio over bootstrap resamples of the pairs (how far the estimate would move with other runs
of the same kind; on a machine shared with other jobs single pairs vary far more than that).
With one intra-op thread ONNX Runtime computes on the calling thread, and ``clock="cpu"`` times
that thread's CPU time: on a machine shared with other jobs, wall time also counts the time the
scheduler gave to other processes, which no kernel choice changes. Timing stops once the spread is narrow enough, or the time budget is spent (at least ``min_pairs``
pairs always), so that one problem never takes long.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import onnxruntime as ort

from ..errors import OnnxSparseError
from ..session import PROVIDERS, open_session

PROVIDER_LISTS = PROVIDERS  # the session module's table, by short name


@dataclass
class Timing:
    dense_us: float  # median per run (per layer instance when ``per`` divided it)
    sparse_us: float
    ratio: float  # dense_us / sparse_us: above 1, sparse is faster
    ratio_low: float  # quartiles of the ratio of medians over bootstrap resamples of the pairs
    ratio_high: float
    pairs: int
    seconds: float  # wall time spent timing

    @property
    def saved_us(self) -> float:
        return self.dense_us - self.sparse_us

    @property
    def spread(self) -> float:
        """Half the width of the ratio's interquartile range, relative to the ratio."""
        return (self.ratio_high - self.ratio_low) / (2.0 * self.ratio) if self.ratio > 0 else 0.0

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def open_pair(dense, sparse, provider: str, options: Callable[[], ort.SessionOptions]):
    """The two sessions (models as paths, bytes or ModelProtos), each with fresh options from
    ``options()`` (``session.timing_options``), through the package's one session factory."""
    return [open_session(model, sparse=which == "sparse", provider=provider, options=options(), what=f"{which} model")
            for which, model in (("dense", dense), ("sparse", sparse))]


def time_pair(
    dense: ort.InferenceSession,
    sparse: ort.InferenceSession,
    feeds: dict,
    budget_s: float = 1.0,
    min_pairs: int = 5,
    max_pairs: int = 400,
    target_spread: float = 0.02,
    warmup: int = 2,
    per: int = 1,
    clock: str = "wall",
    provider: str = "cpu",
) -> Timing:
    """Interleaved runs of the two sessions on ``feeds``. ``per``: divide the times by this (the
    number of layer instances in a timed model). ``clock``: "wall", or "cpu" (the calling thread's
    CPU time; only meaningful where ONNX Runtime computes on that thread: one intra-op thread)."""
    try:
        runners = {dense: runner(dense, feeds, provider), sparse: runner(sparse, feeds, provider)}
        for _ in range(warmup):
            runners[dense]()
            runners[sparse]()
    except Exception as exc:
        raise OnnxSparseError(f"inference failed: {str(exc).splitlines()[0]}") from None
    dense_t: list[float] = []
    sparse_t: list[float] = []
    start = time.perf_counter()
    tick = time.thread_time if clock == "cpu" else time.perf_counter
    while True:
        order = (dense, sparse) if len(dense_t) % 2 == 0 else (sparse, dense)
        for session in order:
            run = runners[session]
            t0 = tick()
            run()
            (dense_t if session is dense else sparse_t).append(tick() - t0)
        pairs = len(dense_t)
        elapsed = time.perf_counter() - start
        if pairs >= max_pairs:
            break
        if pairs >= min_pairs:
            if elapsed >= budget_s:
                break
            if pairs >= 2 * min_pairs and elapsed >= 0.2 * budget_s and _spread(dense_t, sparse_t) <= target_spread:
                break
    return summarize(dense_t, sparse_t, time.perf_counter() - start, per)


def runner(session: ort.InferenceSession, feeds: dict, provider: str):
    """A call that runs the session once on ``feeds``. On CUDA the inputs are copied to the GPU once
    and the outputs stay there (I/O binding), so that the timing is the model's, not the copies'."""
    if provider != "cuda":
        return lambda: session.run(None, feeds)
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda")
    return lambda: session.run_with_iobinding(binding)


def bootstrap_quartiles(dense_t, sparse_t, resamples: int = 200, seed: int = 0) -> tuple[float, float]:
    """Quartiles of median(dense) / median(sparse) over resamples of the pairs (with replacement)."""
    dense, sparse = np.asarray(dense_t, float), np.asarray(sparse_t, float)
    if len(dense) < 2:
        ratio = float(np.median(dense) / np.median(sparse))
        return ratio, ratio
    picks = np.random.default_rng(seed).integers(0, len(dense), size=(resamples, len(dense)))
    ratios = np.median(dense[picks], axis=1) / np.median(sparse[picks], axis=1)
    low, high = np.quantile(ratios, [0.25, 0.75])
    return float(low), float(high)


def _spread(dense_t, sparse_t) -> float:
    if len(dense_t) < 4:
        return 1.0
    low, high = bootstrap_quartiles(dense_t, sparse_t, resamples=100)
    ratio = statistics.median(dense_t) / statistics.median(sparse_t)
    return (high - low) / (2.0 * ratio)


def summarize(dense_t: list[float], sparse_t: list[float], seconds: float = 0.0, per: int = 1) -> Timing:
    """A ``Timing`` from the two sides' run times in seconds (pairs in order)."""
    dense_med = statistics.median(dense_t) * 1e6 / per
    sparse_med = statistics.median(sparse_t) * 1e6 / per
    low, high = bootstrap_quartiles(dense_t, sparse_t)
    return Timing(dense_us=dense_med, sparse_us=sparse_med, ratio=dense_med / sparse_med, ratio_low=low,
                  ratio_high=high, pairs=min(len(dense_t), len(sparse_t)), seconds=seconds)
