"""The README's first two commands stay true: CI runs the second, this test runs the first."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _first_block() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "the README must open with a bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_two_commands():
    lines = _first_block()
    assert len(lines) == 2
    assert (REPO / "README.md").read_text().index("```bash") < 20, "the commands come first"


def test_ci_runs_the_readme_test_command():
    test_command = _first_block()[1].split("&&")[-1].strip()
    ci = (REPO / ".ci" / "run").read_text()
    assert test_command in ci, f"CI must run the README's test command: {test_command}"


@pytest.mark.kernels
def test_main_job_runs_on_the_bundled_sample(tmp_path):
    steps = [step.strip() for step in _first_block()[0].split("&&")]
    assert "pip install" in steps[0]
    (tmp_path / "models" / "samples").mkdir(parents=True)
    sample = REPO / "models" / "samples" / "tiny_transformer.onnx"
    shutil.copy(sample, tmp_path / "models" / "samples")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for step in steps[1:]:  # the install step is what CI itself does
        result = subprocess.run(shlex.split(step), cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{step}\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "models" / "samples" / "tiny_transformer.sparse.onnx").is_file()
    assert "verified: outputs match" in result.stdout
    assert "reference:" not in result.stdout  # a float model: no int8 kernels to name
    assert sample.read_bytes() == (tmp_path / "models" / "samples" / "tiny_transformer.onnx").read_bytes()


def _python_example() -> str:
    block = re.search(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "the README must show a Python example"
    return block.group(1)


def test_python_example_is_five_lines():
    assert len([line for line in _python_example().splitlines() if line.strip()]) <= 5


@pytest.mark.kernels
def test_python_example_runs_on_the_bundled_sample(tmp_path):
    shutil.copy(REPO / "models" / "samples" / "tiny_transformer.onnx", tmp_path / "model.onnx")
    code = _python_example() + "\nassert result.rewritten and session.get_outputs()\n"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
