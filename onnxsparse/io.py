"""Reading and writing models safely.

``load_model`` turns every way a model file can be bad (missing, a directory, empty, not ONNX,
truncated, external data missing, unreadable or pointing outside the model's folder) into an
``OnnxSparseError`` with one clear line. ``save_model`` writes atomically: the model (and its
external data file, if any) are written under temporary names in the output folder and renamed
into place, so a failure leaves no partial output and never touches the input.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import OnnxSparseError
from .spec import MAX_IR_VERSION

# Above this size a model must keep its weights in an external data file (protobuf's 2 GiB limit).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def _check_model_path(path: Path) -> None:
    if not path.exists():
        raise OnnxSparseError(f"{path}: no such file")
    if path.is_dir():
        raise OnnxSparseError(f"{path}: is a directory, not an ONNX model file")
    if not os.access(path, os.R_OK):
        raise OnnxSparseError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise OnnxSparseError(f"{path}: file is empty, not an ONNX model")


def _external_locations(model: onnx.ModelProto) -> list[str]:
    locations = []
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {entry.key: entry.value for entry in tensor.external_data}
            locations.append(info.get("location", ""))
    return locations


def _check_external_data(model: onnx.ModelProto, path: Path) -> None:
    base = path.parent.resolve()
    for location in sorted(set(_external_locations(model))):
        if not location:
            raise OnnxSparseError(f"{path}: a tensor's external data has no location")
        target = (base / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(base):
            raise OnnxSparseError(f"{path}: external data '{location}' points outside the model's folder")
        if not target.is_file():
            raise OnnxSparseError(f"{path}: external data file '{location}' is missing")
        if not os.access(target, os.R_OK):
            raise OnnxSparseError(f"{path}: external data file '{location}' is not readable")


def load_model(path: str | os.PathLike, load_external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model, with external data, or raise ``OnnxSparseError`` saying what is wrong."""
    path = Path(path)
    _check_model_path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OnnxSparseError(f"{path}: cannot read: {exc.strerror or exc}") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError):
        raise OnnxSparseError(f"{path}: not an ONNX model (the file does not parse; truncated or corrupt?)") from None
    if not model.HasField("graph") or not model.opset_import:
        raise OnnxSparseError(f"{path}: not an ONNX model (no graph or no opset import)")
    if load_external_data:
        _check_external_data(model, path)
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise OnnxSparseError(f"{path}: cannot read external data: {exc}") from None
        for tensor in onnx.external_data_helper._get_all_tensors(model):
            expected = _expected_bytes(tensor)
            if expected is not None and tensor.HasField("raw_data") and len(tensor.raw_data) != expected:
                raise OnnxSparseError(
                    f"{path}: external data of tensor '{tensor.name}' is truncated "
                    f"({len(tensor.raw_data)} bytes, expected {expected})"
                )
    return model


def _expected_bytes(tensor: onnx.TensorProto) -> int | None:
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None
    if tensor.data_type in (onnx.TensorProto.STRING,):
        return None
    count = 1
    for dim in tensor.dims:
        count *= dim
    # Sub-byte types are packed; numpy's stand-ins for them take a whole byte per element.
    if tensor.data_type in _PACKED_4BIT:
        return (count + 1) // 2
    if tensor.data_type in _PACKED_2BIT:
        return (count + 3) // 4
    if tensor.data_type in _PACKED_OTHER:
        return None
    return count * itemsize


def _tensor_types(*names: str) -> frozenset[int]:
    """The TensorProto types of these names that this onnx version knows."""
    return frozenset(getattr(onnx.TensorProto, name) for name in names if hasattr(onnx.TensorProto, name))


_PACKED_4BIT = _tensor_types("INT4", "UINT4", "FLOAT4E2M1")
_PACKED_2BIT = _tensor_types("INT2", "UINT2")
_PACKED_OTHER = _tensor_types("FLOAT6E2M3", "FLOAT6E3M2")


def uses_external_data(path: str | os.PathLike) -> bool:
    """Whether the model file at ``path`` keeps tensors in external data files."""
    return bool(_external_locations(load_model(path, load_external_data=False)))


def external_data_files(path: str | os.PathLike) -> list[Path]:
    """The external data files the model at ``path`` refers to, resolved (empty when none)."""
    model = onnx.load(str(path), load_external_data=False)
    base = Path(path).parent
    return [(base / location).resolve() for location in sorted(set(_external_locations(model)))]


def check_output_path(out: str | os.PathLike, inputs: list[str | os.PathLike] = ()) -> Path:
    """Validate an output path before any work: its folder exists and is writable, it is no input."""
    out = Path(out)
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OnnxSparseError(f"{out}: output folder '{folder}' does not exist")
    if out.is_dir():
        raise OnnxSparseError(f"{out}: is a directory; give a file name for the output model")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OnnxSparseError(f"{out}: output folder '{folder}' is not writable")
    for source in inputs:
        if Path(source).exists() and out.exists() and Path(source).resolve() == out.resolve():
            raise OnnxSparseError(f"{out}: output would overwrite the input model; choose another -o")
    return out


def save_model(model: onnx.ModelProto, out: str | os.PathLike, external_data: bool | None = None) -> list[Path]:
    """Write ``model`` to ``out`` atomically; return the files written.

    ``external_data``: True keeps tensors in ``<out name>.data`` beside it, False embeds them,
    None decides by size. The model's IR version is capped at ``MAX_IR_VERSION``.
    """
    out = check_output_path(out)
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    if external_data is None:
        external_data = model.ByteSize() > EXTERNAL_DATA_THRESHOLD
    folder = out.parent if str(out.parent) else Path(".")
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=folder) as staging:
        staged_model = Path(staging) / out.name
        try:
            if external_data:
                data_name = out.name + ".data"
                onnx.save_model(
                    model,
                    str(staged_model),
                    save_as_external_data=True,
                    all_tensors_to_one_file=True,
                    location=data_name,
                    size_threshold=1024,
                )
                # onnx.save_model moves tensors out of the in-memory model; bring them back.
                onnx.load_external_data_for_model(model, staging)
                staged_data = Path(staging) / data_name
                if staged_data.exists():
                    # onnx creates the data file owner-only (0600); give it the model file's mode.
                    shutil.copymode(staged_model, staged_data)
                    os.replace(staged_data, folder / data_name)
                    written.append(folder / data_name)
            else:
                onnx.save_model(model, str(staged_model))
            os.replace(staged_model, out)
            written.append(out)
        except OSError as exc:
            raise OnnxSparseError(f"{out}: cannot write: {exc.strerror or exc}") from None
    return written
