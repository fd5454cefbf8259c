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

Without a table for the target every eligible layer runs sparse, and the reason says so. With a
table that has no rows for the layer's dtype, the layer stays dense (bf16 and fp16 stand in for
each other: the same kernels move the same bytes).
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
# Dtypes whose sparse and dense kernels are the same code at the same width.
_SAME_PATH = {"bfloat16": "float16", "float16": "bfloat16"}


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
    dtype = _DTYPE_NAMES.get(dtype, dtype)
    table = load_table(target)
    if not table:
        return Decision(True, f"no {target} measurements; sparse by default")
    records = [r for r in table if r.get("dtype") == dtype]
    proxy = ""
    if not records and dtype in _SAME_PATH:
        # bf16 and fp16 run the same kernels and move the same bytes: one stands for the other.
        records = [r for r in table if r.get("dtype") == _SAME_PATH[dtype]]
        proxy = f", {_SAME_PATH[dtype]} measurements standing for {dtype}"
    if not records:
        # A target that was measured, but not for this dtype: nothing says sparse is not slower.
        return Decision(False, f"no {target} measurements for {dtype}; kept dense (use --force-sparse to override)")
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
            f"({worst['dense_us'] / worst['sparse_us']:.2f}x at M={worst['m']}, {shape}, measured{proxy})",
        )
    best = min(rows, key=lambda r: r["sparse_us"] / r["dense_us"])
    return Decision(
        True, f"sparse faster on {target} ({best['dense_us'] / best['sparse_us']:.2f}x at M={best['m']}, {shape}{proxy})"
    )


_DTYPE_NAMES = {"float": "float32", "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def _static_product(dims) -> int | None:
    if dims is None or any(not isinstance(d, int) or d < 0 for d in dims):
        return None
    return math.prod(dims)


def layer_gemm_shape(record) -> tuple[int | None, int, int]:
    """(m, k, n) of the GEMM a verified layer runs (a Conv as its implicit GEMM, per group).

    m is None when the activation's shape is not static (a dynamic batch or sequence).
    """
    shape = tuple(record.shape)
    node = record.gs_node
    attrs = getattr(node, "attrs", {}) or {}
    if record.layout == "oihw":
        group = int(attrs.get("group", 1))
        k, n = math.prod(shape[1:]), shape[0] // max(group, 1)
        out_shape = node.outputs[0].shape if node is not None and node.outputs else None
        m = None
        if out_shape is not None and len(out_shape) == 4:
            m = _static_product([out_shape[0], out_shape[2], out_shape[3]])
        return m, k, n
    k, n = (shape[0], shape[1]) if record.layout == "kn" else (shape[1], shape[0])
    a_shape = node.inputs[0].shape if node is not None and node.inputs else None
    m = None
    if a_shape is not None and len(a_shape) >= 1:
        if record.op == "Gemm" and int(attrs.get("transA", 0)) and len(a_shape) == 2:
            m = _static_product([a_shape[1]])
        else:
            m = _static_product(list(a_shape[:-1])) if len(a_shape) > 1 else 1
    return m, k, n


def _matches(patterns, record) -> bool:
    from fnmatch import fnmatchcase

    return any(fnmatchcase(record.node, p) or fnmatchcase(record.op, p) for p in patterns)


def make_policy(target: str | None, force_sparse: list[str] | None = None, force_dense: list[str] | None = None):
    """The compiler's per-layer dense fallback for ``target`` (a ``passes.DensePolicy``).

    ``force_dense`` / ``force_sparse``: fnmatch patterns on node names or op types that override
    the measured choice (``["*"]`` forces every layer). ``target=None``: no measured choice, only
    the forced ones.
    """
    if target is not None:
        load_table(target)  # an unknown target fails here, before any layer is looked at
    force_sparse = list(force_sparse or [])
    force_dense = list(force_dense or [])

    def policy(record) -> str | None:
        if _matches(force_dense, record):
            return "kept dense by --force-dense"
        if target is None or _matches(force_sparse, record):
            return None
        m, k, n = layer_gemm_shape(record)
        decision = decide(target, _DTYPE_NAMES.get(record.dtype, record.dtype), k, n, m)
        return None if decision.sparse else decision.reason

    return policy
