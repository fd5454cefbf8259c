"""Where the custom-op library is: ``get_library_path()``."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

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
