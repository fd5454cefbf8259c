"""Per-target choice between the sparse kernel and the dense op, from measured tables.

A 2:4 layer is only worth rewriting where its sparse kernel beats the dense op on the target.
``onnxsparse/data/perf_<target>.json`` holds measurements taken side by side on the target
(benchmarks/ write them): each record is one GEMM shape

    {"op": "gemm", "dtype": "float16", "m": 64, "k": 4096, "n": 4096,
     "sparse_us": 20.1, "dense_us": 31.0}

(a Conv enters as its implicit GEMM: m = batch*OH*OW, k = KH*KW*C/group, n = OC/group).
``decide`` looks up the measured (k, n) nearest to the layer's in log space, for the layer's
dtype, and the rows whose m is nearest the layer's m (every m when the layer's m is unknown,
so that an unknown batch never picks a kernel that is slower at some batch). The layer runs
sparse when every such row has sparse_us <= dense_us * (1 + TOLERANCE).

Without a table for the target every eligible layer runs sparse, and the reason says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

TARGETS = ("cpu", "cuda")
# Measurement noise: a sparse kernel within 2% of dense counts as not slower.
TOLERANCE = 0.02


@dataclass(frozen=True)
class Decision:
    sparse: bool
    reason: str


@lru_cache(maxsize=None)
def load_table(target: str) -> tuple[dict, ...]:
    """The measured records for a target (empty when none is shipped)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    try:
        text = resources.files("onnxsparse").joinpath("data", f"perf_{target}.json").read_text()
    except (FileNotFoundError, OSError):
        return ()
    data = json.loads(text)
    return tuple(data["records"] if isinstance(data, dict) else data)


def _distance(record: dict, k: int, n: int) -> float:
    return abs(math.log(record["k"] / k)) + abs(math.log(record["n"] / n))


def decide(target: str, dtype: str, k: int, n: int, m: int | None = None) -> Decision:
    """Whether a 2:4 GEMM of this shape should run sparse on ``target``, and why."""
    records = [r for r in load_table(target) if r.get("dtype") == dtype]
    if not records:
        return Decision(True, f"no {target} measurements for {dtype}; sparse by default")
    nearest = min(_distance(r, k, n) for r in records)
    rows = [r for r in records if _distance(r, k, n) == nearest]
    if m is not None:
        closest_m = min(abs(math.log(max(r["m"], 1) / max(m, 1))) for r in rows)
        rows = [r for r in rows if abs(math.log(max(r["m"], 1) / max(m, 1))) == closest_m]
    slower = [r for r in rows if r["sparse_us"] > r["dense_us"] * (1 + TOLERANCE)]
    shape = f"K={rows[0]['k']}, N={rows[0]['n']}"
    if slower:
        worst = max(slower, key=lambda r: r["sparse_us"] / r["dense_us"])
        return Decision(
            False,
            f"sparse kernel slower than dense on {target} "
            f"({worst['dense_us'] / worst['sparse_us']:.2f}x at M={worst['m']}, {shape}, measured)",
        )
    best = min(rows, key=lambda r: r["sparse_us"] / r["dense_us"])
    return Decision(True, f"sparse faster on {target} ({best['dense_us'] / best['sparse_us']:.2f}x at M={best['m']}, {shape})")
