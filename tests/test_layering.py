"""The package's layers point one way: the compiler loads neither ONNX Runtime nor the front door."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

FRONT = ("onnxruntime", "onnxsparse.session", "onnxsparse.api", "onnxsparse.cli", "onnxsparse.io",
         "onnxsparse.commands", "onnxsparse.targets", "onnxsparse.prune")


def _loaded_after(statement: str) -> list[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def test_compiler_does_not_import_onnxruntime_or_the_front_door():
    loaded = _loaded_after("import onnxsparse.compiler")
    assert "onnxsparse.compiler" in loaded
    assert [name for name in loaded if name.startswith(FRONT)] == []


def test_package_root_is_lazy_and_keeps_its_names():
    assert "onnxruntime" not in _loaded_after("import onnxsparse; onnxsparse.DOMAIN")
    loaded = _loaded_after(
        "from onnxsparse import InferenceSession, session_options, get_library_path, OnnxSparseError, "
        "DOMAIN, OPSET_VERSION"
    )
    assert "onnxruntime" in loaded and "onnxsparse.session" in loaded
