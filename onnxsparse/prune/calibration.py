"""Calibration batches: read from ``.npz`` files, or generated from the model's input specs.

A calibration file is an ``.npz`` whose keys are the model's input names, each array shaped like
that input (batch first). ``--calib`` takes one file or a directory of them (read in name order,
one file at a time). A file whose leading dimension is larger than the batch size is split.
Keys, dtypes, ranks and fixed dimensions must match the model's inputs; anything else is an
``OnnxSparseError`` naming the file and the input.

Without calibration data, batches are drawn from the input specs (dynamic dimensions: the batch
size for the first axis, ``DEFAULT_DYNAMIC_DIM`` elsewhere); random inputs say nothing about the
real activations, so the caller warns.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx

from ..errors import OnnxSparseError

DEFAULT_DYNAMIC_DIM = 32
Batch = dict[str, np.ndarray]


def model_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs a caller feeds (not those that only give an initializer a default)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _input_dtype(info: onnx.ValueInfoProto) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type))


def _input_dims(info: onnx.ValueInfoProto) -> list[int | None] | None:
    tensor_type = info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    # A negative dim_value (PaddleOCR exports write -1) is symbolic, as ONNX Runtime reads it.
    return [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else None for d in tensor_type.shape.dim]


def _check(batch: Batch, model: onnx.ModelProto, where: str) -> None:
    inputs = model_inputs(model)
    wanted = [i.name for i in inputs]
    missing = [n for n in wanted if n not in batch]
    extra = [n for n in batch if n not in wanted]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks input(s) {', '.join(map(repr, missing))}")
        if extra:
            parts.append(f"has key(s) {', '.join(map(repr, extra))} that are not model inputs")
        raise OnnxSparseError(f"{where}: {' and '.join(parts)} (model inputs: {', '.join(wanted)})")
    for info in inputs:
        array = batch[info.name]
        dtype = _input_dtype(info)
        if array.dtype != dtype:
            raise OnnxSparseError(f"{where}: input '{info.name}' has dtype {array.dtype}, the model expects {dtype}")
        dims = _input_dims(info)
        if dims is None:
            continue
        if array.ndim != len(dims):
            raise OnnxSparseError(f"{where}: input '{info.name}' has rank {array.ndim}, the model expects rank {len(dims)}")
        for axis, (have, want) in enumerate(zip(array.shape, dims)):
            if want is not None and have != want:
                raise OnnxSparseError(
                    f"{where}: input '{info.name}' has shape {tuple(array.shape)}, the model expects {want} on axis {axis}"
                )


def _read_npz(path: Path) -> Batch:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise OnnxSparseError(f"{path}: not a readable .npz calibration file ({exc})") from None


def _split(batch: Batch, batch_size: int, fixed_axis0: bool = False) -> Iterator[Batch]:
    lengths = {a.shape[0] if a.ndim else None for a in batch.values()}
    if fixed_axis0 or len(lengths) != 1 or None in lengths or batch_size <= 0:
        yield batch
        return
    (length,) = lengths
    for start in range(0, length, batch_size):
        yield {k: v[start : start + batch_size] for k, v in batch.items()}


def calibration_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if not path.exists():
        raise OnnxSparseError(f"{path}: no such calibration file or directory")
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise OnnxSparseError(f"{path}: directory holds no .npz calibration files")
        return files
    return [path]


class Calibration:
    """A re-iterable source of input batches (each pass reads the files again: bounded memory)."""

    def __init__(self, model: onnx.ModelProto, path: str | Path | None = None, batch_size: int = 8,
                 samples: int = 32, seed: int = 0, shapes: dict[str, list[int]] | None = None,
                 int_range: tuple[int, int] | None = None):
        """``shapes``: full shapes of generated inputs by name (dynamic dims otherwise as in the
        module's docstring); ``int_range``: [low, high) of generated integer inputs (default 0..16)."""
        self.model = model
        self.shapes = dict(shapes or {})
        self.int_range = int_range
        unknown = sorted(set(self.shapes) - {i.name for i in model_inputs(model)})
        if unknown:
            raise OnnxSparseError(f"--input-shapes names {', '.join(map(repr, unknown))}, not an input of the model "
                                  f"(inputs: {', '.join(i.name for i in model_inputs(model))})")
        self.batch_size = batch_size
        self.samples = samples
        self.seed = seed
        self.files = calibration_files(path) if path is not None else []
        self.synthetic = path is None
        if self.files:
            for file in self.files:  # fail early, before any long run
                _check(_read_npz(file), model, str(file))
        if not model_inputs(model):
            raise OnnxSparseError("the model has no inputs to calibrate with")

    def __iter__(self) -> Iterator[Batch]:
        if self.synthetic:
            yield from self._synthetic()
            return
        # An input whose first axis is fixed is not a batch axis: such files are fed whole.
        fixed = any((_input_dims(i) or [None])[:1] != [None] for i in model_inputs(self.model))
        for file in self.files:
            yield from _split(_read_npz(file), self.batch_size, fixed)

    def _synthetic(self) -> Iterator[Batch]:
        rng = np.random.default_rng(self.seed)
        remaining = self.samples
        while remaining > 0:
            size = min(self.batch_size, remaining)
            remaining -= size
            yield {info.name: _random_input(info, size, rng, self.shapes.get(info.name), self.int_range)
                   for info in model_inputs(self.model)}


def _random_input(info: onnx.ValueInfoProto, batch: int, rng: np.random.Generator,
                  given: list[int] | None = None, int_range: tuple[int, int] | None = None) -> np.ndarray:
    dims = _input_dims(info)
    if given is not None:
        if dims is not None and (len(given) != len(dims)
                                 or any(d is not None and d != g for d, g in zip(dims, given))):
            raise OnnxSparseError(f"--input-shapes gives '{info.name}' the shape {given}, the model expects "
                                  f"{['?' if d is None else d for d in dims]}")
        dims = list(given)
    if dims is None:
        raise OnnxSparseError(f"input '{info.name}' has no shape; give calibration data with --calib")
    shape = [d if d is not None else (batch if axis == 0 else DEFAULT_DYNAMIC_DIM) for axis, d in enumerate(dims)]
    dtype = _input_dtype(info)
    if np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16":
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        low, high = int_range or (0, 16)
        return rng.integers(low, high, size=shape).astype(dtype)
    raise OnnxSparseError(f"cannot generate input '{info.name}' of dtype {dtype}; give calibration data with --calib")
