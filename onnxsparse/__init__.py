"""onnxsparse: compile 2:4-sparse ONNX models into sparse custom ops for ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"
DOMAIN = "onnxsparse"
OPSET_VERSION = 1

# Installed, the compiler passes are the subpackage onnxsparse.passes (pyproject maps passes/
# there). In a source checkout they sit beside this package in passes/: let the same import find them.
_here = Path(__file__).resolve().parent
if not (_here / "passes").is_dir() and (_here.parent / "passes" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # type: ignore[name-defined]  # noqa: F821

from ._library import get_library_path  # noqa: E402
from .errors import OnnxSparseError  # noqa: E402
from .session import InferenceSession, session_options  # noqa: E402

__all__ = [
    "DOMAIN",
    "OPSET_VERSION",
    "InferenceSession",
    "OnnxSparseError",
    "get_library_path",
    "session_options",
]
