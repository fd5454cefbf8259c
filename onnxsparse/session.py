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


def session_options(options: ort.SessionOptions | None = None) -> ort.SessionOptions:
    """Session options (new, or the given ones) with the custom-op library registered once."""
    options = ort.SessionOptions() if options is None else options
    try:
        already = options.get_session_config_entry(_REGISTERED_KEY) == "1"
    except Exception:  # onnxruntime raises when the key is absent
        already = False
    if not already:
        options.register_custom_ops_library(get_library_path())
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


def open_session(model, sparse: bool, provider: str = "cpu", threads: int | None = None) -> ort.InferenceSession:
    """A session for a dense original (``sparse=False``) or a compiled model (library registered).

    ``threads`` sets intra-op threads (0: all cores) with one inter-op thread, so that two sessions
    timed side by side run alike. A model ONNX Runtime refuses is an ``OnnxSparseError``.
    """
    options = session_options() if sparse else ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=PROVIDERS[provider])
    except Exception as exc:  # onnxruntime's errors carry no common base class
        which = "compiled" if sparse else "original"
        raise OnnxSparseError(f"the {which} model does not load in ONNX Runtime: {str(exc).splitlines()[0]}") from None
