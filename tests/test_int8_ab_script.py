"""benchmarks/int8_ab.py: two library builds side by side (here the same build twice)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, library_available

from onnxsparse._library import get_library_path

SCRIPT = REPO / "benchmarks" / "int8_ab.py"


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


@pytest.mark.kernels
@pytest.mark.skipif(not library_available(), reason="the onnxsparse custom-op library is not built")
def test_same_build_twice():
    library = get_library_path()
    done = _run(library, library, "--isa", "portable", "--weight-limit", "64", "--shapes", "72x40", "--m", "1", "3",
                "--layers", "0.01", "--repeats", "3", "--rounds", "2")
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"^72x40 M=(\d+)\s+A\s+([\d.]+) us\s+B\s+([\d.]+) us\s+B/A ([\d.]+)\s+\(rounds [\d.]+-[\d.]+\)$",
                      done.stdout, re.M)
    assert [r[0] for r in rows] == ["1", "3"], done.stdout
    assert all(float(a) > 0 and float(b) > 0 and float(ratio) > 0 for _, a, b, ratio in rows)


def test_bad_arguments_give_one_line(tmp_path):
    done = _run(tmp_path / "missing.so", tmp_path / "missing.so")
    assert done.returncode == 2 and "no library file" in done.stderr and "Traceback" not in done.stderr
    done = _run(__file__, __file__, "--shapes", "10x3")
    assert done.returncode == 2 and "multiple of 4" in done.stderr and "Traceback" not in done.stderr
    done = _run(__file__, __file__, "--rounds", "0")
    assert done.returncode == 2 and "--rounds" in done.stderr and "Traceback" not in done.stderr
