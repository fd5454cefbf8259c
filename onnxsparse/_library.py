"""Where the custom-op library is: ``get_library_path()``."""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Iterable

from .errors import OnnxSparseError

LIBRARY_NAME = "libonnxsparse_ops.so"
_PACKAGE_DIR = Path(__file__).resolve().parent


def _candidates() -> list[Path]:
    found = [_PACKAGE_DIR / "lib" / LIBRARY_NAME]
    # A source checkout imported in place: a development build under build/ (see DEVELOPERS.md).
    repo = _PACKAGE_DIR.parent
    if (repo / "custom_ops" / "CMakeLists.txt").is_file():
        found.append(repo / "build" / "dev" / LIBRARY_NAME)
    # A source checkout imported in place while the package is also installed (`pip install .`):
    # the installed distribution carries the built library.
    try:
        dist = metadata.distribution("onnxsparse")
        found.append(Path(str(dist.locate_file(f"onnxsparse/lib/{LIBRARY_NAME}"))))
    except metadata.PackageNotFoundError:
        pass
    return found


def get_library_path() -> str:
    """The path of the custom-op library to pass to ``SessionOptions.register_custom_ops_library``.

    ``ONNXSPARSE_LIBRARY`` in the environment overrides the search.
    """
    override = os.environ.get("ONNXSPARSE_LIBRARY")
    if override:
        if not Path(override).is_file():
            raise OnnxSparseError(f"ONNXSPARSE_LIBRARY={override} does not exist")
        return str(Path(override).resolve())
    for path in _candidates():
        if path.is_file():
            return str(path)
    raise OnnxSparseError(
        "the onnxsparse custom-op library was not found; install the package with `pip install .` "
        "(it builds the library) or set ONNXSPARSE_LIBRARY"
    )


# Where NVIDIA's pip wheels put cuSPARSELt under a site-packages folder, most preferred first:
# nvidia-cusparselt-cu13 (the CUDA 13 build this library's kernels are made with), then
# nvidia-cusparselt-cu12.
CUSPARSELT_LAYOUTS = ("nvidia/cu13/lib/libcusparseLt.so.0", "nvidia/cusparselt/lib/libcusparseLt.so.0")


def _package_roots() -> list[str]:
    """The folders a pip wheel's ``nvidia/`` tree may be under: the import path, then the roots of
    the ``nvidia`` namespace package wherever it was found."""
    roots = [entry or os.getcwd() for entry in sys.path]
    try:
        import importlib.util

        spec = importlib.util.find_spec("nvidia")
        if spec is not None and spec.submodule_search_locations:
            roots += [str(Path(location).parent) for location in spec.submodule_search_locations]
    except (ImportError, ValueError):
        pass
    return roots


def find_cusparselt(roots: Iterable[str] | None = None) -> str | None:
    """The path of ``libcusparseLt.so.0`` installed from pip in this Python environment (the
    ``nvidia-cusparselt-cu13`` or ``-cu12`` wheel), or None. The session options pass it to the
    library (``onnxsparse.cusparselt.library``), which tries it before its other places."""
    seen = set()
    for layout in CUSPARSELT_LAYOUTS:
        for root in (_package_roots() if roots is None else roots):
            candidate = Path(root) / layout
            if candidate in seen:
                continue
            seen.add(candidate)
            if candidate.is_file():
                return str(candidate.resolve())
    return None
