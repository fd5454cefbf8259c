"""Numerics of a compiled model against its original: same inputs, every output compared.

The original runs on ONNX Runtime's own kernels; the compiled model runs with the onnxsparse
library registered. Per output: the largest absolute difference, the relative L2 error
``||compiled - original|| / ||original||`` and the cosine similarity (reported), and the pass
rule of ``numpy.allclose`` (as polygraphy's): every element within ``atol + rtol * |original|``,
equal where either side is NaN or infinite.

The default tolerances follow the model's compute dtype, not its outputs' (an fp16 model with
fp32 inputs and outputs computes in fp16): the least precise float dtype of its weights and
outputs. The default ``atol`` is the larger of the dtype's floor and ``rtol`` times the output's
largest magnitude, so that elements near zero, where sums of many products cancel, are judged on
the output's scale; an ``atol`` given explicitly is used as is. Products of 2:4 kernels accumulate
in a different order than dense ones, and fp16/bf16 round differently between ops. A quantized
model (int8 weights) computes in int8: where ONNX Runtime runs a layer's QDQ float op and the
compiled model its integer op, a value on a rounding boundary lands one quantization step apart,
and the step carries through the layers after it, so its rtol allows a few steps of the output's range,
and its atol at least what ONNX Runtime's own two runs of the original (integer kernels, and the
float ops with graph optimizations off) differ by: the model defines its outputs no more closely.

The reference of a quantized model must be exact where the compiled model is. On x86 CPUs without
VNNI, ONNX Runtime's uint8 x int8 kernels add each pair of neighbouring products in saturating
16-bit arithmetic (``vpmaddubsw``): 255 * 127 * 2 > 32767, so a layer with full-range int8
weights comes out slightly wrong there. On CPU, both sessions of an int8 model therefore run with
ONNX Runtime's ``session.x64quantprecision`` entry, under which it moves int8 weights to uint8 and
runs its exact uint8 x uint8 kernels. Where ONNX Runtime refuses a model with that entry (1.32
does for some QDQ transformers), both run without it, and on a CPU without VNNI a warning says that
the reference may be off (weights quantized with ``reduce_range=True``, 7 bits, cannot saturate).
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnxruntime as ort

from . import progress
from .errors import OnnxSparseError
from .metrics import ErrorSums
from .prune.calibration import Calibration
from .session import open_session, ort_message, quiet_run_options, session_options

logger = logging.getLogger(__name__)

# ONNX Runtime's session entry for exact x86 int8 kernels (kOrtSessionOptionsAvx2PrecisionMode).
EXACT_INT8_ENTRY = "session.x64quantprecision"

# (rtol, atol floor) per compute dtype.
TOLERANCES = {
    "int8": (1e-2, 1e-3),
    "float64": (1e-7, 1e-9),
    "float32": (1e-4, 1e-5),
    "float16": (1e-2, 1e-3),
    "bfloat16": (5e-2, 1e-2),
}
# From the least precise: the compute dtype of a model is the first of these it holds.
_PRECISION_ORDER = ("int8", "bfloat16", "float16", "float32", "float64")


@dataclass
class OutputCheck:
    name: str
    dtype: str
    compute_dtype: str
    shape: list[int]
    max_abs: float
    rel_l2: float
    cosine: float
    rtol: float
    atol: float
    worst: float  # largest |diff| / (atol + rtol * |expected|): the output passes at <= 1
    passed: bool
    # An int8 model's reference on CPU: "exact int8 kernels" (session.x64quantprecision=1) or
    # "default int8 kernels" (ONNX Runtime refused the entry); "" otherwise.
    reference: str = ""
    # An int8 model: on the batch this check judges, the largest difference between ONNX Runtime's two
    # runs of the original, its integer kernels (the reference) and the float ops the QDQ model
    # defines (the atol floor).
    int8_spread: float = 0.0


def compute_dtype(model: onnx.ModelProto) -> str | None:
    """The least precise float dtype among the model's weights and outputs (None: none is float)."""
    found = set()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.dims and all(d > 0 for d in tensor.dims):
            found.add(_dtype_name(tensor.data_type))
    for output in model.graph.output:
        found.add(_dtype_name(output.type.tensor_type.elem_type))
    return next((name for name in _PRECISION_ORDER if name in found), None)


def _dtype_name(elem_type: int) -> str:
    if elem_type == onnx.TensorProto.BFLOAT16:
        return "bfloat16"
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return ""


def int8_pairs_saturate(flags: frozenset | None = None, machine: str | None = None) -> bool:
    """Whether ONNX Runtime's uint8 x int8 kernels saturate pair sums on this CPU: x86 without VNNI."""
    from .hardware import cpu_info

    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    flags = cpu_info()["flags"] if flags is None else flags
    return not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def _options(sparse: bool, exact_int8: bool) -> ort.SessionOptions:
    options = session_options() if sparse else ort.SessionOptions()
    if exact_int8:
        options.add_session_config_entry(EXACT_INT8_ENTRY, "1")
    return options


def tolerances(compute: str | None, expected: np.ndarray, rtol: float | None, atol: float | None) -> tuple[float, float]:
    """The (rtol, atol) an output is judged with (see the module's docstring)."""
    default_rtol, atol_floor = TOLERANCES.get(compute or "", TOLERANCES["float32"])
    rtol = default_rtol if rtol is None else rtol
    if atol is None:
        finite = np.abs(expected[np.isfinite(expected)]) if expected.size else np.zeros(0)
        atol = max(atol_floor, rtol * float(finite.max())) if finite.size else atol_floor
    return rtol, atol


def _compare(name: str, expected: np.ndarray, actual: np.ndarray, compute: str | None, rtol: float | None,
             atol: float | None, spread: float = 0.0) -> OutputCheck:
    dtype = str(expected.dtype)
    if expected.shape != actual.shape:
        raise OnnxSparseError(f"output '{name}': shapes differ ({list(actual.shape)} vs {list(expected.shape)})")
    sums = ErrorSums().add(expected, actual)
    exp = expected.astype(np.float64, copy=False)
    act = actual.astype(np.float64, copy=False)
    given = atol is not None
    rtol, atol = tolerances(compute, exp, rtol, atol)
    if not given:
        atol = max(atol, spread)
    same = (exp == act) | (np.isnan(exp) & np.isnan(act))  # equal infinities and NaN positions match
    with np.errstate(invalid="ignore", over="ignore"):
        excess = np.abs(act - exp) / (atol + rtol * np.abs(exp))
    excess = np.where(same, 0.0, np.nan_to_num(excess, nan=np.inf))
    worst = float(excess.max()) if excess.size else 0.0
    passed = worst <= 1.0 and not sums.nan_mismatch
    return OutputCheck(name, dtype, compute or dtype, list(expected.shape), sums.max_abs, sums.rel_l2, sums.cosine,
                       rtol, atol, worst, passed, int8_spread=spread)


def verify(
    original: onnx.ModelProto | str | os.PathLike,
    compiled: onnx.ModelProto | str | os.PathLike,
    inputs: str | None = None,
    samples: int = 4,
    batch_size: int = 1,
    rtol: float | None = None,
    provider: str = "cpu",
    atol: float | None = None,
    seed: int = 0,
    shapes: dict[str, list[int]] | None = None,
    int_range: tuple[int, int] | None = None,
    quiet: bool = True,
) -> list[OutputCheck]:
    """Run both models on the same inputs and compare every output (worst over all batches).

    ``original`` and ``compiled``: paths (ONNX Runtime opens the files; weights are not read here)
    or ``ModelProto``s. ``quiet=False`` shows progress on a terminal's stderr.
    """
    if samples < 1 or batch_size < 1:
        raise OnnxSparseError("--samples and --batch-size must be at least 1")
    for value, flag in ((rtol, "--rtol"), (atol, "--atol")):
        if value is not None and not (value >= 0 and np.isfinite(value)):
            raise OnnxSparseError(f"{flag} must be a finite number >= 0")
    graph = _graph(original)
    compute = compute_dtype(graph)
    batches = Calibration(graph, inputs, batch_size=batch_size, samples=samples, seed=seed, shapes=shapes,
                          int_range=int_range)
    run = quiet_run_options()
    total = -(-samples // batch_size) if inputs is None else None
    exact_int8 = compute == "int8" and provider == "cpu"
    with progress.steps(None if total is None else 2 * total, "verify", quiet=quiet, unit="run") as bar:
        try:
            worst = _run_pair(original, compiled, batches, provider, exact_int8, compute, rtol, atol, run, bar)
        except _ExactRefused:  # both again without the entry
            exact_int8 = False
            bar.reset()
            worst = _run_pair(original, compiled, batches, provider, exact_int8, compute, rtol, atol, run, bar)
    if compute == "int8" and provider == "cpu":
        reference = "exact int8 kernels" if exact_int8 else "default int8 kernels"
        for check in worst.values():
            check.reference = reference
        if exact_int8:
            logger.info("both models ran with %s=1: ONNX Runtime's exact int8 kernels", EXACT_INT8_ENTRY)
        elif int8_pairs_saturate():
            logger.warning(
                "ONNX Runtime refused %s=1 on these models, and this CPU has no VNNI: its uint8 x int8 kernels "
                "saturate pair sums in 16 bits, so the original's run can be off where weights use the full int8 "
                "range (the compiled model's int8 ops are exact); weights quantized with reduce_range=True "
                "cannot saturate", EXACT_INT8_ENTRY)
    if not worst:
        raise OnnxSparseError("no input batches to compare")
    return list(worst.values())


class _ExactRefused(Exception):
    """ONNX Runtime refused a model with ``EXACT_INT8_ENTRY``."""


def _run_pair(original, compiled, batches, provider, exact_int8, compute, rtol, atol, run, bar) -> dict:
    """Both models on every batch; the worst check per output. Raises ``_ExactRefused`` when a session
    does not load with the exact-int8 entry (the caller runs both again without it)."""

    def opened(model, sparse):
        try:
            return open_session(model, sparse=sparse, provider=provider, quiet=True,
                                options=_options(sparse, exact_int8))
        except OnnxSparseError:
            if exact_int8:
                raise _ExactRefused from None
            raise

    # One session at a time: the original runs every batch, then goes before the compiled model's
    # session opens, so that the two models' weights are never in memory together (a 5.8 GB model:
    # 14.2 GiB peak with both sessions open). The inputs and the original's outputs are kept.
    dense = opened(original, False)
    names = [o.name for o in dense.get_outputs()]
    fed, expected = [], []
    for batch in batches:
        expected.append(_run(dense, batch, run))
        fed.append(batch)
        bar.update()
    del dense
    spreads = _int8_spreads(original, fed, expected, provider, run) if compute == "int8" else [None] * len(fed)
    sparse = opened(compiled, True)
    if names != [o.name for o in sparse.get_outputs()]:
        raise OnnxSparseError("the two models have different outputs; is the second compiled from the first?")
    worst: dict[str, OutputCheck] = {}
    for batch, outputs, spread in zip(fed, expected, spreads):
        actual = _run(sparse, batch, run)
        for i, (name, exp, act) in enumerate(zip(names, outputs, actual)):
            check = _compare(name, np.asarray(exp), np.asarray(act), compute, rtol, atol,
                             spread[i] if spread is not None else 0.0)
            if name not in worst or check.worst > worst[name].worst or (worst[name].passed and not check.passed):
                worst[name] = check
        bar.update()
    return {name: worst[name] for name in names if name in worst}


def _int8_spreads(original, fed, expected, provider, run) -> list[list[float]]:
    """Per batch and output, how far ONNX Runtime's float run of the int8 original (graph optimizations
    off: DequantizeLinear, the float op, QuantizeLinear, as the QDQ model defines it) lands from its
    integer run (the reference). A value on a rounding boundary of one layer comes out a step apart
    between the two, and the step grows through the layers after it: the model does not define its
    outputs more closely than that, so the compiled model is held to it (an atol floor)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    unfused = open_session(original, sparse=False, provider=provider, quiet=True, options=options)
    return [[_max_finite_diff(np.asarray(a), np.asarray(b)) for a, b in zip(_run(unfused, batch, run), outputs)]
            for batch, outputs in zip(fed, expected)]


def _run(session: ort.InferenceSession, batch: dict, run: ort.RunOptions) -> list:
    """One batch through a session; ONNX Runtime's failure as the one error line."""
    try:
        return session.run(None, batch, run)
    except Exception as exc:
        raise OnnxSparseError(f"inference failed: {ort_message(exc)}") from None


def _max_finite_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape or a.dtype.kind not in "fiu":
        return 0.0
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    d = d[np.isfinite(d)]
    return float(d.max()) if d.size else 0.0


def _graph(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    from .io import load_model_graph

    return load_model_graph(model)


def to_dict(checks: list[OutputCheck]) -> dict:
    return {"passed": all(c.passed for c in checks), "outputs": [asdict(c) for c in checks]}
