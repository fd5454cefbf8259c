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
sparse when every such row is at least MIN_SPEEDUP[target] times faster sparse (cpu: not slower
beyond the 2% noise; cuda: 10% faster, and saving at least MIN_SAVING_US per call once scaled to
the layer's size). On cuda a Conv needs rows measured as convs. Where the compiler folds a bias Add
into the sparse op and the dense graph would run that Add as a kernel of its own, the dense side
also counts that pass (BIAS_PASS, a fit to measured kernels), once the layer's M is known.

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

import onnx

from .compiler.annotate_shapes import inferred_shapes
from .compiler.layers import matches
from .compiler.pipeline import LayerPolicy
from .spec import itemsize

TARGETS = ("cpu", "cuda")
# Measurement noise: a sparse kernel within 2% of dense counts as not slower.
TOLERANCE = 0.02
# The least measured speedup (dense_us / sparse_us) a layer needs to run sparse, per target.
# cuda asks for 10%: the table times kernels under CUDA-graph replay, while an ONNX Runtime
# session without graphs also pays each op's launch cost (cuSPARSELt's is higher than cuBLAS's),
# and a layer between measured shapes borrows their figures. On an H200, BERT-large-like at batch
# 1 ran 0.80x end to end with the 24 layers measured 1.04x chosen sparse (gpu_notes.md).
MIN_SPEEDUP = {"cpu": 1.0 / (1.0 + TOLERANCE), "cuda": 1.10}
# The least time a layer must save per call, per target, in microseconds (the row's saving scaled
# by the layer's M*K*N over the row's, plus the bias pass below). On an H200 (gpu_notes.md, session
# 4), BERT-large-like's q/k/v layers at batch 8, which save about 5 us per call (kernel and bias
# pass), gained end to end; at batch 1, where layers save under 1 us, the run is bound by launches
# and a sparse op launches more work than cuBLAS (0.90x with every layer sparse).
MIN_SAVING_US = {"cpu": 0.0, "cuda": 4.0}
# What the dense graph pays for a bias Add the compiler folds into the sparse op, per target:
# (us per kernel, bytes per second) for one pass that reads and writes M*N elements. Fitted to
# ONNX Runtime's bias-add kernel in the BERT-large-like kernel trace on an H200 (96 calls per run at
# batches 1, 8 and 32: 10.4, 37.4 and 143 us per layer against 8.2, 37.8 and 140 predicted).
BIAS_PASS = {"cuda": (1.0, 2.6e12)}
# Ops that ONNX Runtime fuses a preceding bias Add into (SkipLayerNormalization, BiasGelu,
# FastGelu, BiasDropout, BiasSoftmax, ...): only a bias Add read by none of the ops outside this
# list of plain readers runs as a kernel of its own in the dense graph.
_BIAS_READERS_UNFUSED = frozenset(
    {"", "Reshape", "Transpose", "Relu", "MatMul", "Gemm", "Flatten", "Squeeze", "Unsqueeze", "Identity",
     "Concat", "Split", "Slice", "Cast", "MatMulCompress", "Conv2dCompress"}
)
# Ops whose kernels a target's table measures as GEMMs. On cuda a Conv adds im2col and a layout
# transpose around the sparse GEMM, which the GEMM rows leave out (ResNet-50-like at batch 32
# ran 0.77x with its convs chosen from GEMM rows), so a Conv there needs rows of its own
# ({"op": "conv", ...}).
_GEMM_ROWS_COVER = {"cpu": ("gemm", "conv"), "cuda": ("gemm",)}
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


def bias_pass_us(target: str, m: int, n: int, itemsize: int) -> float:
    """The time a separate bias-add kernel over an [m, n] output takes on ``target`` (0: not modelled)."""
    if target not in BIAS_PASS:
        return 0.0
    launch_us, bytes_per_s = BIAS_PASS[target]
    return launch_us + 2.0 * m * n * itemsize / bytes_per_s * 1e6


def decide(
    target: str, dtype: str, k: int, n: int, m: int | None = None, op: str = "gemm", dense_extra_us: float = 0.0
) -> Decision:
    """Whether a 2:4 GEMM of this shape should run sparse on ``target``, and why.

    ``op``: "gemm" (MatMul, Gemm) or "conv" (a Conv as its implicit GEMM). ``dense_extra_us``:
    what the dense layer costs on top of its GEMM that the sparse op saves (the bias pass the
    fold removes); counted only when ``m`` is known, since the rows are scaled to the layer.
    """
    dtype = _DTYPE_NAMES.get(dtype, dtype)
    table = load_table(target)
    if not table:
        return Decision(True, f"no {target} measurements; sparse by default")
    kinds = ("conv",) if op == "conv" else ("gemm",)
    if op == "conv" and "conv" in _GEMM_ROWS_COVER.get(target, ()):
        kinds = ("conv", "gemm")
    table = [r for r in table if r.get("op", "gemm") in kinds]
    if not table:
        return Decision(
            False, f"no {target} measurements for {op} layers; kept dense (use --force-sparse to override)"
        )
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
    need = MIN_SPEEDUP.get(target, 1.0 / (1.0 + TOLERANCE))
    extra = dense_extra_us if m is not None else 0.0

    def scale(r):
        return (k * n) / (r["k"] * r["n"]) * ((m / r["m"]) if m is not None else 1.0)

    def speedup(r):  # the layer's dense time (GEMM and what the fold saves) over its sparse time
        return (r["dense_us"] * scale(r) + extra) / (r["sparse_us"] * scale(r))

    slower = [r for r in rows if speedup(r) < need]
    shape = f"K={rows[0]['k']}, N={rows[0]['n']}"
    counted = f"; counting the {extra:.1f} us bias pass the fold saves" if extra > 0 else ""
    min_saving = MIN_SAVING_US.get(target, 0.0)
    if not slower and min_saving > 0:
        def saving(r):
            return (r["dense_us"] - r["sparse_us"]) * scale(r) + extra

        small = [r for r in rows if saving(r) < min_saving]
        if small:
            least = min(small, key=saving)
            return Decision(
                False,
                f"sparse kernel saves {saving(least):.1f} us per call on {target}, under the {min_saving:g} us a "
                f"sparse layer must save there (measured at M={least['m']}, {shape}{proxy}{counted})",
            )
    if slower:
        worst = min(slower, key=speedup)
        ratio = speedup(worst)
        what = "slower than dense" if ratio < 1.0 / (1.0 + TOLERANCE) else f"less than {need:.2f}x faster than dense"
        return Decision(
            False,
            f"sparse kernel {what} on {target} ({ratio:.2f}x at M={worst['m']}, {shape}, measured{proxy}{counted})",
        )
    best = max(rows, key=speedup)
    return Decision(True, f"sparse faster on {target} ({speedup(best):.2f}x at M={best['m']}, {shape}{proxy}{counted})")


# The tables name float "float32".
_DTYPE_NAMES = {"float": "float32"}


def _static_product(dims, bindings: dict[str, int] | None = None) -> int | None:
    if dims is None:
        return None
    dims = [bindings.get(d, d) if bindings and isinstance(d, str) else d for d in dims]
    if any(not isinstance(d, int) or d < 0 for d in dims):
        return None
    return math.prod(dims)


def layer_gemm_shape(
    record, dims: dict[str, int] | None = None, shapes: dict[str, tuple] | None = None
) -> tuple[int | None, int, int]:
    """(m, k, n) of the GEMM a verified layer runs (a Conv as its implicit GEMM, per group).

    ``dims`` binds symbolic dimensions by name (``{"batch": 32}``); ``shapes`` gives tensor shapes
    inferred with those bindings (``static_shapes``), which reach past Reshapes that lose the
    names. m is None when the activation's shape is still not static.
    """
    shape = tuple(record.shape)
    attrs = record.attrs or {}

    def tensor_shape(name, known):
        if shapes and name in shapes:
            return shapes[name]
        return known

    if record.layout == "oihw":
        group = int(attrs.get("group", 1))
        k, n = math.prod(shape[1:]), shape[0] // max(group, 1)
        out_shape = tensor_shape(record.output, record.output_shape) if record.output else None
        m = None
        if out_shape is not None and len(out_shape) == 4:
            m = _static_product([out_shape[0], out_shape[2], out_shape[3]], dims)
        return m, k, n
    k, n = (shape[0], shape[1]) if record.layout == "kn" else (shape[1], shape[0])
    a_shape = tensor_shape(record.activation, record.activation_shape) if record.activation else None
    m = None
    if a_shape is not None and len(a_shape) >= 1:
        if record.op == "Gemm" and int(attrs.get("transA", 0)) and len(a_shape) == 2:
            m = _static_product([a_shape[1]], dims)
        else:
            m = _static_product(list(a_shape[:-1]), dims) if len(a_shape) > 1 else 1
    return m, k, n


def static_shapes(model, dims: dict[str, int]) -> dict[str, tuple]:
    """Shapes of the model's tensors inferred with the graph inputs' symbolic dimensions bound
    (data propagation carries them through Shape/Reshape chains). Empty when inference fails."""
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    for value in bound.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in dims:
                dim.dim_value = dims[dim.dim_param]
    del bound.graph.value_info[:]
    return {name: tuple(shape) for name, (_, shape) in inferred_shapes(bound, data_prop=True).items()}


def parse_dims(items: list[str] | None) -> dict[str, int]:
    """``["batch=32", "seq=384"]`` -> ``{"batch": 32, "seq": 384}`` (ValueError says what is wrong)."""
    dims: dict[str, int] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name or not value.strip().isdigit() or int(value) <= 0:
            raise ValueError(f"--dim {item!r}: expected NAME=VALUE with a positive integer VALUE")
        dims[name] = int(value)
    return dims


def _matches(patterns, record) -> bool:
    return matches(patterns, record.node, record.op)


class TargetPolicy(LayerPolicy):
    """The compiler's per-layer dense fallback for a target (a ``compiler.LayerPolicy``).

    The compile pipeline calls ``prepare(model)`` before the layers are looked at; with ``dims``
    it infers the shapes the model has at those dimension values.
    """

    def __init__(self, target, force_sparse, force_dense, dims):
        self.target = target
        self.force_sparse = list(force_sparse or [])
        self.force_dense = list(force_dense or [])
        self.dims = dict(dims or {})
        self.shapes: dict[str, tuple] = {}

    def prepare(self, model) -> None:
        self.shapes = static_shapes(model, self.dims) if self.dims and self.target else {}

    def __call__(self, record) -> str | None:
        if _matches(self.force_dense, record):
            return "kept dense by --force-dense"
        if self.target is None or _matches(self.force_sparse, record):
            return None
        m, k, n = layer_gemm_shape(record, self.dims, self.shapes)
        op = "conv" if record.layout == "oihw" else "gemm"
        dtype = _DTYPE_NAMES.get(record.dtype, record.dtype)
        extra = 0.0
        if m is not None and record.bias_add and all(
            reader in _BIAS_READERS_UNFUSED for reader in record.bias_consumers
        ):
            extra = bias_pass_us(self.target, m, n, itemsize(dtype))
        decision = decide(self.target, dtype, k, n, m, op, extra)
        return None if decision.sparse else decision.reason


def make_policy(
    target: str | None,
    force_sparse: list[str] | None = None,
    force_dense: list[str] | None = None,
    dims: dict[str, int] | None = None,
) -> TargetPolicy:
    """The compiler's per-layer dense fallback for ``target``.

    ``force_dense`` / ``force_sparse``: fnmatch patterns on node names or op types that override
    the measured choice (``["*"]`` forces every layer). ``target=None``: no measured choice, only
    the forced ones. ``dims``: values of symbolic input dimensions (``{"batch": 32}``) for the
    choice only (the compiled model keeps them symbolic); a layer whose M stays unknown must be
    not slower at every measured M.
    """
    if target is not None:
        load_table(target)  # an unknown target fails here, before any layer is looked at
    return TargetPolicy(target, force_sparse, force_dense, dims)
