"""Pruning a model whose weights stay in their files: one weight in memory at a time.

``prune`` on a model with external data (``open_model``) never loads the weights: the model is
read with ``load_external_data=False``, each layer's weight is read from its file when it is
pruned (a memory map at its offset, copied out), and the pruned weight is appended to a scratch
file in the output's folder; the model's tensor then points there (location ``scratch``). ONNX
Runtime opens every model the pruner runs (captures, errors) from its small serialized graph, with
``session.model_external_initializers_file_folder_path`` set to the source's folder, so that it
maps the weights from their files; a pruned weight is handed to it as an initializer mapped from
the scratch file (ONNX Runtime refuses absolute locations and links out of that folder), and
prepacking is off so that no session keeps a second copy of the weights. ``save`` writes the
output's data file a tensor at a time (pruned weights from the scratch file, the others copied in
chunks from the source) and publishes it with the model as a pair.

While ``open_model``'s context is active, ``layers.read_weight``/``write_weight`` and the
pruner's sessions go through it (``active()``): the pruner's code is the same for both cases.

Before -> After (locations):
  a pruned weight: ``model.onnx.data`` (offset o, length l) -> ``scratch``, its offset there
  in the output: every external tensor -> ``<out>.data``, 64-byte aligned
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from .. import io
from ..errors import OnnxSparseError
from ..spec import MAX_IR_VERSION

ALIGN = 64
CHUNK = 16 << 20
SCRATCH = "scratch"
_ACTIVE: contextvars.ContextVar["ModelFiles | None"] = contextvars.ContextVar("onnxsparse_prune_files", default=None)


def active() -> "ModelFiles | None":
    return _ACTIVE.get()


def _info(tensor: onnx.TensorProto) -> tuple[str, int, int | None]:
    info = {entry.key: entry.value for entry in tensor.external_data}
    try:
        return info.get("location", ""), int(info.get("offset", 0) or 0), (int(info["length"]) if info.get("length") else None)
    except ValueError:
        raise OnnxSparseError(f"tensor '{tensor.name}': external data offset or length is not a number") from None


def _point(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


class ModelFiles:
    """The scratch file and the reads and writes of weights that stay in files."""

    def __init__(self, source: Path, work: Path):
        self.folder = source.resolve().parent  # where the source's locations are relative to
        self.work = work  # in the output folder: the scratch file and the staged output live here
        self.scratch_path = work / SCRATCH
        self.scratch = open(self.scratch_path, "w+b")
        self.offset = 0
        self.original: dict[str, tuple[str, int, int]] = {}  # pruned tensor -> its source location

    def path_of(self, location: str) -> Path:
        return self.scratch_path if location == SCRATCH else self.folder / location

    def _mapped(self, tensor: onnx.TensorProto) -> np.ndarray:
        location, offset, length = _info(tensor)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        if length is None:
            length = count * dtype.itemsize
        if count * dtype.itemsize != length:
            raise OnnxSparseError(f"tensor '{tensor.name}': external data holds {length} bytes, its dims need "
                                  f"{count * dtype.itemsize}")
        if location == SCRATCH:
            self.scratch.flush()
        return np.memmap(self.path_of(location), dtype=dtype, mode="r", offset=offset, shape=tuple(tensor.dims))

    def read(self, tensor: onnx.TensorProto) -> np.ndarray:
        """The tensor's values, read from their file into a new array (not mapped: the pages of a map
        would count in the process's memory beside the copy)."""
        if not is_external(tensor):
            return numpy_helper.to_array(tensor)
        location, offset, length = _info(tensor)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        values = np.empty(tuple(tensor.dims), dtype)
        if length is not None and length != values.nbytes:
            raise OnnxSparseError(f"tensor '{tensor.name}': external data holds {length} bytes, its dims need "
                                  f"{values.nbytes}")
        if location == SCRATCH:
            self.scratch.flush()
        buffer = memoryview(values.reshape(-1).view(np.uint8))
        with open(self.path_of(location), "rb") as f:
            f.seek(offset)
            done = 0
            while done < values.nbytes:
                got = f.readinto(buffer[done:])
                if not got:
                    raise OnnxSparseError(f"tensor '{tensor.name}': its external data file ends early")
                done += got
        return values

    def write(self, tensor: onnx.TensorProto, values: np.ndarray) -> None:
        """Append ``values`` to the scratch file and point the tensor at them (name and dtype kept)."""
        data = np.ascontiguousarray(values.astype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type), copy=False))
        location, offset, length = _info(tensor)
        if location != SCRATCH:
            self.original.setdefault(tensor.name, (location, offset, length))
        pad = (-self.offset) % ALIGN
        self.scratch.seek(self.offset)
        self.scratch.write(b"\0" * pad)
        self.offset += pad
        self.scratch.write(memoryview(data.reshape(-1)).cast("B"))
        _point(tensor, SCRATCH, self.offset, data.nbytes)
        self.offset += data.nbytes

    def session_source(self, model: onnx.ModelProto):
        """(serialized model, options, mapped arrays to keep alive) for ONNX Runtime: the source's
        folder for external data, every pruned weight given as an initializer mapped from the scratch
        file (its tensor pointed back at its source location, which ONNX Runtime then never reads)."""
        import onnxruntime as ort

        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        options = ort.SessionOptions()
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(self.folder))
        options.add_session_config_entry("session.disable_prepacking", "1")
        keep = []
        # The main graph's pruned initializers first, by walking that graph itself: Python ids of protobuf
        # messages are not stable across iterations (upb makes a new wrapper each time), so they cannot
        # tell the main graph's tensors from the others.
        for tensor in copy.graph.initializer:
            if is_external(tensor) and _info(tensor)[0] == SCRATCH and tensor.name in self.original:
                mapped = self._mapped(tensor)
                value = ort.OrtValue.ortvalue_from_numpy(mapped)
                options.add_initializer(tensor.name, value)
                keep += [mapped, value]
                _point(tensor, *self.original[tensor.name])
        for tensor in onnx.external_data_helper._get_all_tensors(copy):
            if is_external(tensor) and _info(tensor)[0] == SCRATCH:  # in a subgraph or a Constant: embedded
                tensor.CopyFrom(numpy_helper.from_array(np.array(self._mapped(tensor)), tensor.name))
        return copy.SerializeToString(), options, keep

    def chunks(self, tensor: onnx.TensorProto) -> Iterator[bytes]:
        location, offset, length = _info(tensor)
        if length is None:
            length = max(0, self.path_of(location).stat().st_size - offset)
        if not self.scratch.closed:
            self.scratch.flush()
        with open(self.path_of(location), "rb") as f:
            f.seek(offset)
            left = length
            while left > 0:
                block = f.read(min(CHUNK, left))
                if not block:
                    raise OnnxSparseError(f"tensor '{tensor.name}': its external data file ends early")
                left -= len(block)
                yield block

    def holds_only(self, tensors: list[onnx.TensorProto]) -> bool:
        """Whether the scratch file holds exactly the data of these tensors' scratch parts (each
        written once, in order, no other weight's data in between or after)."""
        spans = sorted(_info(t)[1:] for t in tensors if _info(t)[0] == SCRATCH)
        end = 0
        for offset, length in spans:
            if length is None or offset != end + (-end) % ALIGN:
                return False
            end = offset + length
        return bool(spans) and end == self.offset

    def close(self) -> None:
        self.scratch.close()


def dense_session(model: onnx.ModelProto):
    """A quiet CPU session of a dense model the pruner runs (captures, errors): from the serialized
    graph with the links folder while a ``ModelFiles`` is active, else by the package's factory."""
    from ..session import open_session

    files = active()
    if files is None:
        return open_session(model, sparse=False, quiet=True, what="model")
    serialized, options, keep = files.session_source(model)
    session = open_session(serialized, sparse=False, quiet=True, what="model", options=options)
    session.onnxsparse_mapped = keep  # the pruned weights' maps live as long as the session
    return session


@contextlib.contextmanager
def open_model(source: str | os.PathLike, output: str | os.PathLike) -> Iterator[tuple[onnx.ModelProto, ModelFiles]]:
    """The model at ``source`` with its weights left in their files, and the files object (active
    for the pruner while the context lasts); the scratch files go at the end."""
    source, output = Path(source), Path(output)
    model = io.load_model_graph(source)
    folder = output.parent if str(output.parent) else Path(".")
    io.clean_stale_staging(folder)
    work = Path(tempfile.mkdtemp(prefix=f".onnxsparse-staging-{os.getpid()}-", dir=folder))
    files = ModelFiles(source, work)
    token = _ACTIVE.set(files)
    try:
        yield model, files
    finally:
        _ACTIVE.reset(token)
        files.close()
        shutil.rmtree(work, ignore_errors=True)


def save(model: onnx.ModelProto, out: Path, files: ModelFiles, inputs: list[Path]) -> list[Path]:
    """Write ``model`` and its data file (``<out name>.data``; another free name of the form
    ``<out name>.<16 hex>.data`` when that one exists) a tensor at a time, then publish them: the
    data file first, the model renamed over ``out`` last; the data file of the model it replaced
    goes after (never an input's)."""
    out = io.check_output_path(out, inputs)
    folder = out.parent if str(out.parent) else Path(".")
    protected = {Path(p).resolve() for p in inputs}
    for p in inputs:
        protected |= set(io.external_data_files(p))
    try:
        old_data = set(io.external_data_files(out)) if out.is_file() else set()
    except Exception:  # an unreadable earlier output refers to nothing we know
        old_data = set()
    data_name = f"{out.name}.data"
    if (folder / data_name).exists() or (folder / data_name).is_symlink():
        data_name = f"{out.name}.{secrets.token_hex(8)}.data"
    staged_model = files.work / "out.onnx"
    tensors = [t for t in onnx.external_data_helper._get_all_tensors(model) if is_external(t)]
    try:
        if files.holds_only(tensors):
            # The scratch file holds the pruned weights and nothing else: it becomes the data file, the
            # other weights appended to it (no copy of the pruned ones).
            staged_data, data, offset = files.scratch_path, files.scratch, files.offset
            data.seek(offset)
        else:
            staged_data = files.work / "out.data"
            data, offset = open(staged_data, "wb"), 0
        with data:
            for tensor in tensors:
                if staged_data == files.scratch_path and _info(tensor)[0] == SCRATCH:
                    _point(tensor, data_name, *_info(tensor)[1:])
                    continue
                pad = (-offset) % ALIGN
                data.write(b"\0" * pad)
                offset += pad
                length = 0
                for block in files.chunks(tensor):
                    data.write(block)
                    length += len(block)
                _point(tensor, data_name, offset, length)
                offset += length
            data.flush()
            os.fsync(data.fileno())
        if model.ir_version > MAX_IR_VERSION:
            model.ir_version = MAX_IR_VERSION
        staged_model.write_bytes(model.SerializeToString())
        target = folder / data_name
        if target.resolve() in protected:
            raise OnnxSparseError(f"{target}: would overwrite the input's external data; choose another -o")
        os.replace(staged_data, target)
        os.replace(staged_model, out)
    except OSError as exc:
        raise OnnxSparseError(f"{out}: cannot write: {exc.strerror or exc}") from None
    for stale in old_data:
        if stale != target.resolve() and stale not in protected and stale.parent == folder.resolve() \
                and stale.name.startswith(out.name) and stale.name.endswith(".data"):
            with contextlib.suppress(OSError):
                stale.unlink()
    return [target, out]
