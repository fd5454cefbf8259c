"""docs/torch.md's quick start runs as written: the Python block trains, finalizes and exports, the
bash block compiles and verifies the exported model."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install '.[torch]')")

from conftest import REPO  # noqa: E402


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (REPO / "docs" / "torch.md").read_text(), re.S)


@pytest.mark.kernels
def test_quick_start_trains_exports_and_compiles(tmp_path, monkeypatch):
    pytest.importorskip("onnxscript", reason="the quick start uses the dynamo exporter, which needs onnxscript")
    monkeypatch.chdir(tmp_path)
    generator = torch.Generator().manual_seed(0)
    loader = [(torch.randn(16, 1, 8, 8, generator=generator), torch.randint(0, 10, (16,), generator=generator))
              for _ in range(3)]
    namespace = {"loader": loader}
    exec(compile(_blocks("python")[0], "docs/torch.md", "exec"), namespace)  # noqa: S102 - our own doc
    report = namespace["report"]
    assert [(r.layer, r.rewritten) for r in report.layers] == [("1", True), ("3", True)]
    commands = [c for c in _blocks("bash") if "compile" in c][0].strip()
    for step in commands.split("&&"):
        args = shlex.split(step)
        assert args[0] == "onnxsparse"
        result = subprocess.run([sys.executable, "-m", "onnxsparse", *args[1:]], capture_output=True, text=True,
                                env={"PYTHONPATH": str(REPO), **_env()})
        assert result.returncode == 0, f"{step}\n{result.stdout}\n{result.stderr}"
    assert "match" in result.stdout


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
