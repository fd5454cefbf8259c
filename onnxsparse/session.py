"""ONNX Runtime sessions with the onnxsparse custom-op library registered."""

from __future__ import annotations

import os
from typing import Any, Sequence

import onnxruntime as ort

from ._library import get_library_path

_REGISTERED_KEY = "onnxsparse.library_registered"


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
