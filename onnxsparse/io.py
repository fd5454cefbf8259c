"""Reading and writing models safely.

``load_model`` turns every way a model file can be bad (missing, a directory, empty, not ONNX,
truncated, external data missing, unreadable, a symlink loop, pointing outside the model's folder,
a NUL or an over-long name in a location; a tensor whose type, dims and data disagree; a name that
is not UTF-8) into an ``OnnxSparseError`` with one clear line.

``check_output_path`` is the one output-path guard of every command that writes a model: no output
may be one of the input's files (the model or an external data file it refers to).

``save_model`` publishes the model and its external data file as a pair (see its docstring): a
failure or a kill leaves the previous output whole and never touches the input.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

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
        shown = location if len(location) <= 60 else location[:60] + "..."
        if "\0" in location:
            raise OnnxSparseError(f"{path}: external data location {shown!r} contains a NUL character")
        if any(len(os.fsencode(part)) > _NAME_MAX for part in Path(location).parts):
            raise OnnxSparseError(f"{path}: external data location '{shown}' has a name over {_NAME_MAX} bytes")
        try:
            target = (base / location).resolve()
            is_file = target.is_file()
        except RuntimeError:  # Python 3.11 reports a symlink loop this way
            raise OnnxSparseError(f"{path}: external data '{shown}' is a symlink loop") from None
        except OSError as exc:
            raise OnnxSparseError(f"{path}: external data '{shown}': {exc.strerror or exc}") from None
        if Path(location).is_absolute() or not target.is_relative_to(base):
            raise OnnxSparseError(f"{path}: external data '{shown}' points outside the model's folder")
        if not is_file:
            if (base / location).is_symlink():
                raise OnnxSparseError(f"{path}: external data '{shown}' is a broken or looping symlink")
            raise OnnxSparseError(f"{path}: external data file '{shown}' is missing")
        if not os.access(target, os.R_OK):
            raise OnnxSparseError(f"{path}: external data file '{shown}' is not readable")


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
    _check_names(model, path)
    _check_tensors(model, path, with_data=False)
    external = frozenset()
    if load_external_data:
        external = frozenset(t.name for t in onnx.external_data_helper._get_all_tensors(model)
                             if t.data_location == onnx.TensorProto.EXTERNAL)
        _check_external_data(model, path)
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise OnnxSparseError(f"{path}: cannot read external data: {exc}") from None
    _check_tensors(model, path, with_data=load_external_data, external=external)
    return model


def load_model_graph(path: str | os.PathLike) -> onnx.ModelProto:
    """The model without its external data, after the checks ``load_model`` makes of the files it
    refers to (they exist, are readable and inside the model's folder). For callers that hand the
    path itself to ONNX Runtime."""
    path = Path(path)
    model = load_model(path, load_external_data=False)
    _check_external_data(model, path)
    return model


def open_model(path: str | os.PathLike) -> onnx.ModelProto:
    """The model with its large weights left in their files, for the commands that stream them
    (check, compile, diff): after the checks ``load_model`` makes, each external initializer of at
    least 1 KiB keeps its ``external_data`` with the location made absolute (resolved against the
    model's folder, so that ``compiler.graph.constant_array``, ``tensor_chunks`` and ``save_model``
    read it from there, once, when it is needed); smaller ones and external tensors that are node
    attributes are read in, as ``load_model`` would. Each external tensor's length is checked against
    its file and its dims here, so a truncated file is refused before any work.

    ONNX Runtime and onnx.checker refuse absolute locations: ``save_model`` writes such a model (it
    copies those weights into the output's data file), or ``session.model_source`` opens it."""
    path = Path(path)
    model = load_model(path, load_external_data=False)
    _check_external_data(model, path)
    base = path.parent.resolve()
    tensors = [(t, False) for t in onnx.external_data_helper._get_initializer_tensors(model)]
    tensors += [(t, True) for t in onnx.external_data_helper._get_attribute_tensors(model)]
    for tensor, is_attribute in tensors:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location, offset, length = external_info(tensor)
        file = (base / location).resolve()
        name = tensor.name or "(unnamed)"
        size = file.stat().st_size
        if length is None:
            length = max(0, size - offset)
        expected = _expected_bytes(tensor)
        available = max(0, min(length, size - offset))
        if expected is not None and available != expected:
            problem = "is truncated" if available < expected else "is longer than its dims need"
            raise OnnxSparseError(
                f"{path}: external data of tensor '{name}' {problem} ({available} bytes, expected "
                f"{expected} for {onnx.TensorProto.DataType.Name(tensor.data_type).lower()}{list(tensor.dims)})")
        if available < _EXTERNAL_MIN_BYTES or is_attribute:
            _read_in(tensor, file, offset, available)
        else:
            _set_external(tensor, str(file), offset, available)
    return model


def external_info(tensor: onnx.TensorProto) -> tuple[str, int, int | None]:
    """An external tensor's (location, offset, length); length None when the entry is absent."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    try:
        offset = int(info.get("offset", 0) or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError:
        raise OnnxSparseError(f"tensor '{tensor.name}': external data offset or length is not a number") from None
    return info.get("location", ""), offset, length


def _set_external(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL


def _read_in(tensor: onnx.TensorProto, file: str | os.PathLike, offset: int, length: int) -> None:
    with open(file, "rb") as f:
        f.seek(offset)
        tensor.raw_data = f.read(length)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT


_CHUNK = 16 << 20


def tensor_chunks(tensor: onnx.TensorProto, chunk: int = _CHUNK) -> Iterator[bytes]:
    """The raw bytes of a tensor that ``open_model`` left in its file, a chunk at a time."""
    location, offset, length = external_info(tensor)
    with open(location, "rb") as f:
        f.seek(offset)
        left = length if length is not None else -1
        while left != 0:
            block = f.read(chunk if left < 0 else min(chunk, left))
            if not block:
                break
            if left > 0:
                left -= len(block)
            yield block


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _check_names(model: onnx.ModelProto, path: Path) -> None:
    """Names that are not UTF-8 (protobuf hands them over as bytes) are refused: ONNX names are text."""
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        items = [("graph input", v.name) for v in graph.input] + [("graph output", v.name) for v in graph.output]
        items += [("initializer", t.name) for t in graph.initializer]
        for node in graph.node:
            items += [("node", node.name), ("node op type", node.op_type)]
            items += [("tensor", n) for n in (*node.input, *node.output)]
            graphs += [a.g for a in node.attribute if a.HasField("g")] + [g for a in node.attribute for g in a.graphs]
        for what, name in items:
            if isinstance(name, bytes):
                raise OnnxSparseError(f"{path}: a {what} name is not valid UTF-8 ({name[:40]!r})")


def _check_tensors(model: onnx.ModelProto, path: Path, with_data: bool, external: frozenset = frozenset()) -> None:
    """Each tensor's type, dims and data agree (checked before any compiler or runtime code sees them).

    ``external``: names of the tensors whose data was read from external files (for the message)."""
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        name = tensor.name or "(unnamed)"
        if tensor.data_type == onnx.TensorProto.UNDEFINED or tensor.data_type not in _KNOWN_TYPES:
            raise OnnxSparseError(f"{path}: tensor '{name}' has data_type {tensor.data_type}, "
                                  "which is not an ONNX element type")
        if any(d < 0 for d in tensor.dims):
            raise OnnxSparseError(f"{path}: tensor '{name}' has a negative dimension {list(tensor.dims)}")
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            if not with_data:
                continue
        expected = _expected_bytes(tensor)
        if tensor.HasField("raw_data"):
            if expected is not None and len(tensor.raw_data) != expected:
                kind = "external data" if tensor.name in external else "raw data"
                problem = "is truncated" if len(tensor.raw_data) < expected else "is longer than its dims need"
                raise OnnxSparseError(
                    f"{path}: {kind} of tensor '{name}' {problem} ({len(tensor.raw_data)} bytes, expected "
                    f"{expected} for {onnx.TensorProto.DataType.Name(tensor.data_type).lower()}{list(tensor.dims)})"
                )
        elif _element_count(tensor) > 0 and not any(len(getattr(tensor, f)) for f in _VALUE_FIELDS):
            raise OnnxSparseError(f"{path}: tensor '{name}' has dims {list(tensor.dims)} but no data")


def _element_count(tensor: onnx.TensorProto) -> int:
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count


_VALUE_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
_KNOWN_TYPES = frozenset(v for v in onnx.TensorProto.DataType.values() if v != onnx.TensorProto.UNDEFINED)


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


def expected_bytes(tensor: onnx.TensorProto) -> int | None:
    """The bytes a tensor's dims and type need (None for strings and types without a fixed size)."""
    return _expected_bytes(tensor)


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


def _input_files(inputs) -> set[Path]:
    """Every file an input model consists of: the model file and its external data files, resolved."""
    files: set[Path] = set()
    for source in inputs:
        source = Path(source)
        try:
            if not source.is_file():
                continue
            files.add(source.resolve())
            model = onnx.load(str(source), load_external_data=False)
        except Exception:  # an unreadable input is reported by its loader, not here
            continue
        for location in _external_locations(model):
            try:
                files.add((source.parent / location).resolve())
            except (OSError, RuntimeError, ValueError):
                continue
    return files


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except (OSError, RuntimeError, ValueError):
        return False


def check_output_path(out: str | os.PathLike, inputs: list[str | os.PathLike] = ()) -> Path:
    """The one output-path guard of every command that writes a model (compile, prune, ...).

    Call it with the output and the input model path(s) before any work. It refuses an empty path,
    a file name over 255 bytes, a folder that does not exist or is not writable, a directory, and
    an output that is one of the inputs' files: an input model or any external data file an input
    refers to (same path, a link to it, or a hard link). ``save_model(..., inputs=...)`` repeats it
    and never writes or removes those files either.
    """
    if str(out) == "":
        raise OnnxSparseError("the output path is empty; give a file name for the output model")
    if "\0" in str(out):
        raise OnnxSparseError(f"{str(out)!r}: the output path contains a NUL character")
    out = Path(out)
    if len(os.fsencode(out.name)) > _NAME_MAX:
        raise OnnxSparseError(f"{out.name[:40]}...: output file name is too long "
                              f"({len(os.fsencode(out.name))} bytes; at most {_NAME_MAX})")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OnnxSparseError(f"{out}: output folder '{folder}' does not exist")
    if out.is_dir():
        raise OnnxSparseError(f"{out}: is a directory; give a file name for the output model")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OnnxSparseError(f"{out}: output folder '{folder}' is not writable")
    for source in inputs:
        if Path(source).exists() and out.exists() and _same_file(Path(source), out):
            raise OnnxSparseError(f"{out}: output would overwrite the input model; choose another -o")
    if out.exists() or out.is_symlink():
        for protected in _input_files(inputs):
            if _same_file(protected, out):
                raise OnnxSparseError(f"{out}: output would overwrite the input's external data file "
                                      f"'{protected.name}'; choose another -o")
    return out


_NAME_MAX = 255
# Staging folders live in the output folder (renames must stay on one file system) under this
# prefix and the writer's process id; a writer killed mid-save leaves one, and the next save into
# the same folder removes those whose process is gone.
_STAGING_PREFIX = ".onnxsparse-staging-"
_STAGING = re.compile(r"^\.onnxsparse-staging-(\d+)-[A-Za-z0-9_]+$")
_DATA_ALIGN = 64  # offset alignment of each tensor in the data file
_EXTERNAL_MIN_BYTES = 1024  # smaller tensors stay in the model file, like onnx's default


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def clean_stale_staging(folder: str | os.PathLike) -> list[Path]:
    """Remove the staging folders of writers that died in ``folder``; return what was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _STAGING.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not _process_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _data_names(out: Path) -> re.Pattern:
    """Names of the data files ``save_model`` writes for ``out``: ``<name>.data``, ``<name>.<hash>.data``."""
    return re.compile(re.escape(out.name) + r"(\.[0-9a-f]{16})?\.data")


def _referenced_data(model_path: Path) -> set[Path]:
    """The data files an existing model file refers to (empty when it does not parse)."""
    try:
        model = onnx.load(str(model_path), load_external_data=False)
        return {(model_path.parent / location).resolve() for location in _external_locations(model) if location}
    except Exception:
        return set()


def model_bytes(model: onnx.ModelProto) -> int:
    """The size of a model's tensor data, without serializing it (``ByteSize`` fails over 2 GB):
    the bytes held in memory and those ``open_model`` left in files."""
    total = 0
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if is_external(tensor):
            total += external_info(tensor)[2] or 0
        else:
            total += len(tensor.raw_data)
    return total


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _externalized(model: onnx.ModelProto, data_path: Path, digest=None, sources=None):
    """Write the large tensors to ``data_path``: those with raw data of at least 1 KiB, and those
    ``open_model`` left in their files (copied a chunk at a time); return [(tensor, offset, length)].
    ``digest``: a hashlib object fed every byte written (to name the file when its name is taken).
    ``sources``: tensors whose bytes are made at this moment (``compiler.DeferredPairs``)."""
    moved = []
    offset = 0
    with open(data_path, "wb", buffering=0) as data:
        writer = _StreamingWriter(data)
        for tensor in onnx.external_data_helper._get_initializer_tensors(model):
            if sources is not None and sources.owns(tensor):
                chunks = sources.chunks(tensor)
            elif is_external(tensor):
                chunks = tensor_chunks(tensor)
            elif tensor.HasField("raw_data") and len(tensor.raw_data) >= _EXTERNAL_MIN_BYTES:
                chunks = [tensor.raw_data]
            else:
                continue
            pad = (-offset) % _DATA_ALIGN
            if pad:
                writer.write(b"\0" * pad)
                if digest is not None:
                    digest.update(b"\0" * pad)
                offset += pad
            length = 0
            for chunk in chunks:
                writer.write(chunk)
                if digest is not None:
                    digest.update(chunk)
                length += len(chunk)
            del chunks
            moved.append((tensor, offset, length))
            offset += length
        writer.finish()
        os.fsync(data.fileno())
    return moved


class _StreamingWriter:
    """Writes a large data file without filling the page cache with it: every 64 MiB window written
    is handed to writeback at once (``sync_file_range``), and once the window after it is full, it
    is waited for and its pages dropped (``POSIX_FADV_DONTNEED``). On a machine whose memory is
    full of page cache, a plain write makes the writer reclaim pages for every new one it dirties
    (measured: 3.25 GB written from a reused buffer on the 2-core Zen 4 at load 11, 3.4-5.1 s of
    system time plain, 0.9-1.5 s windowed); the pages it reuses here were just freed. A file under
    one window keeps its pages cached. Where ``sync_file_range`` is missing (not Linux) nothing is
    dropped. Durability is unchanged: the caller fsyncs the file at the end."""

    WINDOW = 64 << 20

    def __init__(self, file) -> None:
        self.file = file
        self.fd = file.fileno()
        self.written = 0
        self.started = 0  # windows [started, written) are not yet handed to writeback
        self.pending: tuple[int, int] | None = None  # the window handed over last, to drop later
        self.sync = _sync_file_range() if hasattr(os, "posix_fadvise") else None

    def write(self, chunk) -> None:
        view = memoryview(chunk).cast("B") if not isinstance(chunk, bytes) else chunk
        done = 0
        while done < len(view):  # an unbuffered file may write less than asked
            done += self.file.write(view[done:])
        self.written += len(view)
        if self.sync is not None and self.written - self.started >= self.WINDOW:
            self._window()

    def _window(self) -> None:
        start, length = self.started, self.written - self.started
        try:
            self.sync(self.fd, start, length, _SYNC_WRITE)
            if self.pending is not None:
                self.sync(self.fd, *self.pending, _SYNC_WAIT_BEFORE | _SYNC_WRITE | _SYNC_WAIT_AFTER)
                os.posix_fadvise(self.fd, *self.pending, os.POSIX_FADV_DONTNEED)
        except OSError:
            self.sync = None  # the file system refuses: write on without dropping pages
            return
        self.pending = (start, length)
        self.started = self.written

    def finish(self) -> None:
        self.file.flush()


_SYNC_WAIT_BEFORE, _SYNC_WRITE, _SYNC_WAIT_AFTER = 1, 2, 4


def _sync_file_range():
    """libc's ``sync_file_range(fd, offset, nbytes, flags)`` raising OSError, or None where there is none."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError, ImportError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int

    def sync(fd: int, offset: int, nbytes: int, flags: int) -> None:
        if function(fd, offset, nbytes, flags) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
    return sync


def _saved_state(tensor: onnx.TensorProto):
    if is_external(tensor):
        return [(entry.key, entry.value) for entry in tensor.external_data]
    return tensor.raw_data


def _point_to(moved, location: str) -> list:
    saved = []
    for tensor, offset, length in moved:
        saved.append(_saved_state(tensor))
        _set_external(tensor, location, offset, length)
    return saved


def _restore(moved, saved: list) -> None:
    for (tensor, _, _), state in zip(moved, saved):
        del tensor.external_data[:]
        if isinstance(state, list):
            for key, value in state:
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.data_location = onnx.TensorProto.EXTERNAL
        else:
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = state


def _embedded(model: onnx.ModelProto, sources=None) -> list:
    """Read in every tensor ``open_model`` left in a file or ``sources`` makes (to embed it);
    return what to restore."""
    moved, saved = [], []
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if sources is not None and sources.owns(tensor):
            moved.append((tensor, 0, None))
            saved.append(_saved_state(tensor))
            raw = b"".join(sources.chunks(tensor))
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = raw
        elif is_external(tensor):
            location, offset, length = external_info(tensor)
            moved.append((tensor, offset, length))
            saved.append(_saved_state(tensor))
            _read_in(tensor, location, offset, length if length is not None else -1)
    return moved, saved


def save_model(model: onnx.ModelProto, out: str | os.PathLike, external_data: bool | None = None,
               inputs: list[str | os.PathLike] = (), sources=None) -> list[Path]:
    """Write ``model`` to ``out`` atomically; return the files written.

    ``external_data``: True keeps tensors in a data file beside it, False embeds them, None decides
    by size. ``inputs``: the input model(s), whose files are never written or removed (see
    ``check_output_path``). ``sources``: an object whose ``owns(tensor)`` picks placeholder tensors
    and ``chunks(tensor)`` makes their bytes as they are written (``compiler.DeferredPairs``). The model's IR version is capped at ``MAX_IR_VERSION``.

    The model and its data file are published as a pair: the data file gets a name no existing
    file has (``<out name>.data``, or ``<out name>.<first 16 hex of its sha256>.data`` when that
    exists), the model referring to it is renamed over ``out`` last, and only then are the data
    files of the model it replaced (and those an interrupted save left unreferenced: names of the
    form above only, never an input's) removed. A reader sees the old pair or the new pair, never
    a mix; a kill leaves at most an unreferenced data file and a staging folder, which the next
    save of ``out`` (staging folders: any save into the folder) removes. Nothing is written
    relative to the current directory.
    """
    out = check_output_path(out, inputs)
    protected = _input_files(inputs)
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    if external_data is None:
        external_data = model_bytes(model) > EXTERNAL_DATA_THRESHOLD
    folder = out.parent if str(out.parent) else Path(".")
    clean_stale_staging(folder)
    old_data = _referenced_data(out) if out.is_file() else set()
    written: list[Path] = []
    staging = None
    try:
        staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-", dir=folder))
        staged_model = staging / "model.onnx"
        moved, saved = [], []
        try:
            if external_data:
                staged_data = staging / "data"
                data_name = f"{out.name}.data"
                taken = (folder / data_name).exists() or (folder / data_name).is_symlink()
                digest = hashlib.sha256() if taken else None  # the name is free: no need to hash
                moved = _externalized(model, staged_data, digest, sources)
                if taken:
                    data_name = f"{out.name}.{digest.hexdigest()[:16]}.data"
                if len(os.fsencode(data_name)) > _NAME_MAX:
                    raise OnnxSparseError(f"{out.name[:40]}...: output file name is too long for its external "
                                          f"data file '<name>.data' (at most {_NAME_MAX} bytes in all)")
                saved = _point_to(moved, data_name)
            else:
                moved, saved = _embedded(model, sources)
            try:
                serialized = model.SerializeToString()
            except Exception:
                raise OnnxSparseError(f"{out}: the model is too large to write without external data "
                                      "(protobuf's 2 GB limit)") from None
        finally:
            _restore(moved, saved)
        staged_model.write_bytes(serialized)
        del serialized
        _fsync(staged_model)
        if external_data and moved:
            target = folder / data_name
            if target.resolve() in protected:
                raise OnnxSparseError(f"{target}: would overwrite the input's external data; choose another -o")
            shutil.copymode(staged_model, staged_data)
            os.replace(staged_data, target)
            written.append(target)
        os.replace(staged_model, out)
        _fsync(folder)
        written.append(out)
    except OSError as exc:
        raise OnnxSparseError(f"{out}: cannot write: {exc.strerror or exc}") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    # Now that the new pair is in place: the data files of the model it replaced, and any that an
    # interrupted save left unreferenced, go (only names of the form save_model gives; never an input's).
    keep = {p.resolve() for p in written} | protected
    pattern = _data_names(out)
    try:
        candidates = {p.resolve() for p in folder.iterdir() if pattern.fullmatch(p.name)} | old_data
    except OSError:
        candidates = old_data
    for stale in candidates:
        if stale not in keep and stale.parent == folder.resolve() and pattern.fullmatch(stale.name):
            try:
                stale.unlink()
            except OSError:
                pass
    return written
