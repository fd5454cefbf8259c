"""ONNX Runtime sessions with the onnxsparse custom-op library registered."""

from __future__ import annotations

import os
from typing import Any, Sequence

import onnxruntime as ort

from ._library import get_library_path
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
    "cuda_allow_no_cusparselt": "onnxsparse.cuda.allow_no_cusparselt",
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
        try:
            options.register_custom_ops_library(get_library_path())
        except Exception as exc:
            if "onnxsparse: " in str(exc):  # the library refused an option
                raise OnnxSparseError(str(exc).split("onnxsparse: ", 1)[-1]) from exc
            raise
        options.add_session_config_entry(_REGISTERED_KEY, "1")
    return options


class InferenceSession(ort.InferenceSession):
    """``onnxruntime.InferenceSession`` that can run compiled models (the library is registered).

    ``model`` is a path, a serialized model (bytes) or an ``onnx.ModelProto``.
    """

    def __init__(
        self,
        model: Any,
        sess_options: ort.SessionOptions | None = None,
        providers: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if hasattr(model, "SerializeToString"):
            model = model.SerializeToString()
        elif isinstance(model, os.PathLike):
            model = os.fspath(model)
        super().__init__(model, sess_options=session_options(sess_options), providers=providers, **kwargs)


def open_session(model, sparse: bool, provider: str = "cpu", threads: int | None = None, quiet: bool = False,
                 what: str | None = None) -> ort.InferenceSession:
    """A session for a dense original (``sparse=False``) or a compiled model (library registered).

    The one session factory of the package (verify, bench, the pruner's captures and evaluations).
    ``threads`` sets intra-op threads (0: all cores) with one inter-op thread, so that two sessions
    timed side by side run alike. ``quiet`` keeps ONNX Runtime's warnings off stderr. A model ONNX
    Runtime refuses is an ``OnnxSparseError`` naming it (``what``; default: the original or compiled model).
    """
    options = session_options() if sparse else ort.SessionOptions()
    if quiet:
        options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=PROVIDERS[provider])
    except Exception as exc:  # onnxruntime's errors carry no common base class
        what = what or ("compiled model" if sparse else "original model")
        raise OnnxSparseError(f"the {what} does not load in ONNX Runtime: {str(exc).splitlines()[0]}") from None
