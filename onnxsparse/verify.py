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
and the step carries through the layers after it, so its rtol allows a few steps of the output's range.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from . import progress
from .errors import OnnxSparseError
from .metrics import ErrorSums
from .prune.calibration import Calibration
from .session import open_session, ort_message, quiet_run_options

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


def tolerances(compute: str | None, expected: np.ndarray, rtol: float | None, atol: float | None) -> tuple[float, float]:
    """The (rtol, atol) an output is judged with (see the module's docstring)."""
    default_rtol, atol_floor = TOLERANCES.get(compute or "", TOLERANCES["float32"])
    rtol = default_rtol if rtol is None else rtol
    if atol is None:
        finite = np.abs(expected[np.isfinite(expected)]) if expected.size else np.zeros(0)
        atol = max(atol_floor, rtol * float(finite.max())) if finite.size else atol_floor
    return rtol, atol


def _compare(name: str, expected: np.ndarray, actual: np.ndarray, compute: str | None, rtol: float | None,
             atol: float | None) -> OutputCheck:
    dtype = str(expected.dtype)
    if expected.shape != actual.shape:
        raise OnnxSparseError(f"output '{name}': shapes differ ({list(actual.shape)} vs {list(expected.shape)})")
    sums = ErrorSums().add(expected, actual)
    exp = expected.astype(np.float64, copy=False)
    act = actual.astype(np.float64, copy=False)
    rtol, atol = tolerances(compute, exp, rtol, atol)
    same = (exp == act) | (np.isnan(exp) & np.isnan(act))  # equal infinities and NaN positions match
    with np.errstate(invalid="ignore", over="ignore"):
        excess = np.abs(act - exp) / (atol + rtol * np.abs(exp))
    excess = np.where(same, 0.0, np.nan_to_num(excess, nan=np.inf))
    worst = float(excess.max()) if excess.size else 0.0
    passed = worst <= 1.0 and not sums.nan_mismatch
    return OutputCheck(name, dtype, compute or dtype, list(expected.shape), sums.max_abs, sums.rel_l2, sums.cosine,
                       rtol, atol, worst, passed)


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
    # One session at a time: the original runs every batch, then goes before the compiled model's
    # session opens, so that the two models' weights are never in memory together (a 5.8 GB model:
    # 14.2 GiB peak with both sessions open). The inputs and the original's outputs are kept.
    run = quiet_run_options()
    total = -(-samples // batch_size) if inputs is None else None
    with progress.steps(None if total is None else 2 * total, "verify", quiet=quiet, unit="run") as bar:
        dense = open_session(original, sparse=False, provider=provider, quiet=True)
        names = [o.name for o in dense.get_outputs()]
        fed, expected = [], []
        for batch in batches:
            try:
                expected.append(dense.run(None, batch, run))
            except Exception as exc:
                raise OnnxSparseError(f"inference failed: {ort_message(exc)}") from None
            fed.append(batch)
            bar.update()
        del dense
        sparse = open_session(compiled, sparse=True, provider=provider, quiet=True)
        if names != [o.name for o in sparse.get_outputs()]:
            raise OnnxSparseError("the two models have different outputs; is the second compiled from the first?")
        worst: dict[str, OutputCheck] = {}
        for batch, outputs in zip(fed, expected):
            try:
                actual = sparse.run(None, batch, run)
            except Exception as exc:
                raise OnnxSparseError(f"inference failed: {ort_message(exc)}") from None
            for name, exp, act in zip(names, outputs, actual):
                check = _compare(name, np.asarray(exp), np.asarray(act), compute, rtol, atol)
                if name not in worst or check.worst > worst[name].worst or (worst[name].passed and not check.passed):
                    worst[name] = check
            bar.update()
    if not worst:
        raise OnnxSparseError("no input batches to compare")
    return [worst[name] for name in names]


def _graph(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    from .io import load_model_graph

    return load_model_graph(model)


def to_dict(checks: list[OutputCheck]) -> dict:
    return {"passed": all(c.passed for c in checks), "outputs": [asdict(c) for c in checks]}
