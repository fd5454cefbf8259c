"""onnxsparse: compile 2:4-sparse ONNX models into sparse custom ops for ONNX Runtime.

The package root is lazy (PEP 562): ``import onnxsparse.compiler`` or ``onnxsparse.format`` loads
neither ONNX Runtime nor the front door; the names below are imported on first use.
"""

from __future__ import annotations

from importlib import import_module

from .spec import DOMAIN, OPSET_VERSION

__version__ = "0.1.0"

# name -> the module that defines it
_LAZY = {
    "InferenceSession": ".session",
    "session_options": ".session",
    "get_library_path": "._library",
    "OnnxSparseError": ".errors",
}

__all__ = [
    "DOMAIN",
    "OPSET_VERSION",
    "InferenceSession",
    "OnnxSparseError",
    "get_library_path",
    "session_options",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxsparse' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
