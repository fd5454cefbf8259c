"""ONNX Runtime sessions with the onnxsparse custom-op library registered."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import onnx
import onnxruntime as ort

from ._library import find_cusparselt, get_library_path
from .errors import OnnxSparseError

_REGISTERED_KEY = "onnxsparse.library_registered"
# The execution providers the CLI offers, by short name.
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


# The library's run-time options (custom_ops/common/runtime_options.h): keyword -> session config
# entry, read when the library is registered. Environment variables ONNXSPARSE_* override them.
RUNTIME_OPTIONS = {
    "cpu_isa": "onnxsparse.cpu_isa",  # auto | portable | avx2 | avx512
    "cuda_small_m_max": "onnxsparse.cuda.small_m_max",
    "cuda_own_timed_m_max": "onnxsparse.cuda.own_timed_m_max",
    "cuda_pack": "onnxsparse.cuda.pack",
    "cuda_pdl": "onnxsparse.cuda.pdl",
    "cuda_persistent": "onnxsparse.cuda.persistent",
    "cuda_allow_no_cusparselt": "onnxsparse.cuda.allow_no_cusparselt",
    "cuda_nonfinite": "onnxsparse.cuda.nonfinite",
    "cuda_int8_scaled_output": "onnxsparse.cuda.int8_scaled_output",
    "cusparselt_tune": "onnxsparse.cusparselt.tune",
    "cusparselt_cache": "onnxsparse.cusparselt.cache",  # a file, or "off"
    "cusparselt_max_config_id": "onnxsparse.cusparselt.max_config_id",
    "cusparselt_library": "onnxsparse.cusparselt.library",
    "log_verbose": "onnxsparse.log_verbose",
    "trace": "onnxsparse.trace",
}


def session_options(options: ort.SessionOptions | None = None, **runtime: Any) -> ort.SessionOptions:
    """Session options (new, or the given ones) with the custom-op library registered once.

    Keyword arguments set the library's run-time options (``RUNTIME_OPTIONS``; e.g. ``cpu_isa="avx2"``,
    ``cuda_small_m_max=16``, ``trace=True``) as ``onnxsparse.*`` session config entries before the
    library is registered, which reads them. An unknown keyword, options given for options that
    already have the library, or a value the library refuses raise ``OnnxSparseError``.
    """
    unknown = sorted(set(runtime) - set(RUNTIME_OPTIONS))
    if unknown:
        raise OnnxSparseError(f"unknown onnxsparse runtime option(s) {', '.join(unknown)}; "
                              f"known: {', '.join(RUNTIME_OPTIONS)}")
    options = ort.SessionOptions() if options is None else options
    try:
        already = options.get_session_config_entry(_REGISTERED_KEY) == "1"
    except Exception:  # onnxruntime raises when the key is absent
        already = False
    if already and runtime:
        raise OnnxSparseError("runtime options must be given before the library is registered on these session "
                              "options (it reads them at registration)")
    if not already:
        for name, value in runtime.items():
            if value is None:
                continue
            text = ("1" if value else "0") if isinstance(value, bool) else str(value)
            options.add_session_config_entry(RUNTIME_OPTIONS[name], text)
        _default_cusparselt_library(options)
        _seed_cusparselt_cache(options)
        try:
            options.register_custom_ops_library(get_library_path())
        except Exception as exc:
            if "onnxsparse: " in str(exc):  # the library refused an option
                raise OnnxSparseError(str(exc).split("onnxsparse: ", 1)[-1]) from exc
            raise
        options.add_session_config_entry(_REGISTERED_KEY, "1")
    return options


def _default_cusparselt_library(options: ort.SessionOptions) -> None:
    """cuSPARSELt installed from pip in this environment (``pip install "onnxsparse[cuda]"``), passed
    to the library as ``onnxsparse.cusparselt.library`` unless the caller set that entry: the
    library tries it before the loader's search path (ONNXSPARSE_CUSPARSELT_LIBRARY still wins)."""
    key = RUNTIME_OPTIONS["cusparselt_library"]
    try:
        if options.get_session_config_entry(key):
            return
    except Exception:  # onnxruntime raises when the key is absent
        pass
    found = find_cusparselt()
    if found:
        options.add_session_config_entry(key, found)


def _seed_cusparselt_cache(options: ort.SessionOptions) -> None:
    """With CUDA, the default cuSPARSELt tuning cache file, when it does not exist yet, starts from
    the shipped tables (onnxsparse/cusparselt_table.py): a model not tuned on this machine then runs
    the configurations measured on the same GPU model instead of cuSPARSELt's default algorithm. A
    cache file named by the session or ONNXSPARSE_CUSPARSELT_CACHE is left to its owner."""
    if "CUDAExecutionProvider" not in ort.get_available_providers() or os.environ.get("ONNXSPARSE_CUSPARSELT_CACHE"):
        return
    try:
        if options.get_session_config_entry(RUNTIME_OPTIONS["cusparselt_cache"]):
            return
    except Exception:  # onnxruntime raises when the key is absent
        pass
    from .cusparselt_table import default_cache_path, seed_cache

    path = default_cache_path()
    if path is not None:
        seed_cache(path)


class InferenceSession(ort.InferenceSession):
    """``onnxruntime.InferenceSession`` that can run compiled models (the library is registered).

    ``model`` is a path, a serialized model (bytes) or an ``onnx.ModelProto``. A path is opened
    by ONNX Runtime itself (external data mapped from its files); a ``ModelProto`` over
    ``INLINE_LIMIT`` bytes of tensors is written with external data to a temporary folder and
    opened from there (protobuf cannot serialize 2 GB).
    """

    def __init__(
        self,
        model: Any,
        sess_options: ort.SessionOptions | None = None,
        providers: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        options = session_options(sess_options)
        with model_source(model) as source:
            super().__init__(source, sess_options=options, providers=providers, **kwargs)


# A ModelProto whose tensors exceed this many bytes is opened from a file with external data.
INLINE_LIMIT = 1_800_000_000


@contextlib.contextmanager
def model_source(model: Any) -> Iterator[str | bytes]:
    """What ONNX Runtime opens for ``model``: a path as is, bytes as is, a small ``ModelProto``
    serialized, a large one saved with external data to a temporary folder (removed afterwards:
    the session has read or mapped the files by then)."""
    if isinstance(model, (str, os.PathLike)):
        yield os.fspath(model)
        return
    if isinstance(model, (bytes, bytearray)):
        yield bytes(model)
        return
    from . import io

    in_files = any(io.is_external(t) for t in onnx.external_data_helper._get_all_tensors(model))
    if io.model_bytes(model) <= INLINE_LIMIT and not in_files:  # weights left in files (io.open_model): save
        yield model.SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="onnxsparse-session-") as folder:
        path = Path(folder) / "model.onnx"
        io.save_model(model, path, external_data=True)
        yield str(path)


def quiet_run_options() -> ort.RunOptions:
    """Run options under which a failing run logs nothing itself: its message becomes the caller's one
    error line (``ort_message``) instead of an extra ERROR line on stderr before it."""
    options = ort.RunOptions()
    options.log_severity_level = 4
    return options


def ort_message(exc: BaseException) -> str:
    """ONNX Runtime's whole message on one line (its useful part, e.g. "index: 0 Got: 1 Expected: 64",
    is often on the second line)."""
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : ", "", str(exc).strip())
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def timing_options(threads: int, runtime: dict | None = None, profile_prefix: str | None = None,
                   spinning: bool = True) -> ort.SessionOptions:
    """The options both sides of a timed comparison use (tune, benchmarks): the library registered
    (with ``runtime`` keywords), ``threads`` intra-op threads (0: ONNX Runtime's default), one
    inter-op thread, sequential; ``spinning=False``: the pool's threads sleep instead of spinning
    between ops (``session.intra_op.allow_spinning=0``, for cores other jobs share);
    ``profile_prefix``: ONNX Runtime's profiler on."""
    options = session_options(**(runtime or {}))
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def open_session(model, sparse: bool, provider: str = "cpu", threads: int | None = None, quiet: bool = False,
                 what: str | None = None, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """A session for a dense original (``sparse=False``) or a compiled model (library registered).

    ``model``: a path (opened by ONNX Runtime, external data mapped from its files), or a
    ``ModelProto`` (see ``model_source``: one over ``INLINE_LIMIT`` goes through a temporary file).

    The one session factory of the package (verify, bench, the pruner's captures and evaluations).
    ``threads`` sets intra-op threads (0: all cores) with one inter-op thread, so that two sessions
    timed side by side run alike; ``options`` (e.g. ``timing_options``) are used as given. ``quiet`` keeps ONNX Runtime's warnings off stderr. A model ONNX
    Runtime refuses is an ``OnnxSparseError`` naming it (``what``; default: the original or compiled model).
    """
    if options is None:
        options = session_options() if sparse else ort.SessionOptions()
    if quiet:
        options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        with model_source(model) as source:
            return ort.InferenceSession(source, options, providers=PROVIDERS[provider])
    except OnnxSparseError:
        raise
    except Exception as exc:  # onnxruntime's errors carry no common base class
        what = what or ("compiled model" if sparse else "original model")
        raise OnnxSparseError(f"the {what} does not load in ONNX Runtime: {ort_message(exc)}") from None
