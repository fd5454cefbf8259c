"""Shipped cuSPARSELt tuning tables (onnxsparse/cusparselt_table.py): a cache file's entries as
tables and back, the file the kernels' own reader accepts (the check tool built beside the library,
or from its two sources), seeding only a cache file that does not exist, and the session hook that
seeds only with CUDA and only the default file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import onnxruntime as ort
import pytest

from conftest import REPO, library_available
from onnxsparse import cusparselt_table as ct

ENTRIES = [
    "0.8.0\tNVIDIA H200\t9.0\tfloat16\t256\t4096\t4096\t4096\t0\t35\t17\t31.25",
    "0.8.0\tNVIDIA H200\t9.0\tfloat16\t256\t4096\t4096\t4096\t0\t-1\t-1\t40.50",
    "0.8.0\tNVIDIA H200\t9.0\tfloat16\t6272\t256\t64\t-49\t1\t35\t3\t12.00",
    "0.8.0\tNVIDIA A100-SXM4-80GB\t8.0\tbfloat16\t16\t1024\t1024\t1024\t1\t35\t2\t5.10",
]
CACHE = "\n".join([ct.CACHE_HEADER, ct.CACHE_COLUMNS, *ENTRIES, "not\tan\tentry", ""])


def _tool() -> Path:
    library = os.environ.get("ONNXSPARSE_LIBRARY")
    if library and (Path(library).resolve().parent / "onnxsparse_tuning_cache_check").is_file():
        return Path(library).resolve().parent / "onnxsparse_tuning_cache_check"
    compiler = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if compiler is None:
        pytest.skip("onnxsparse_tuning_cache_check not built beside ONNXSPARSE_LIBRARY and no C++ compiler to build it")
    out = Path(tempfile.mkdtemp(prefix="onnxsparse-tcc-")) / "onnxsparse_tuning_cache_check"
    sources = REPO / "custom_ops"
    done = subprocess.run([compiler, "-std=c++17", "-O1", f"-I{sources}",
                           str(sources / "cuda" / "cusparselt" / "tuning_cache.cc"),
                           str(sources / "cuda" / "cusparselt" / "tuning_cache_check.cc"), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_tables_group_by_gpu_and_version_and_write_back_the_same_lines():
    tables = ct.tables_from_cache(CACHE, {"date": "2026-11-29"})
    assert [(t["gpu"], t["sm"], t["cusparselt"], len(t["entries"])) for t in tables] == [
        ("NVIDIA H200", "9.0", "0.8.0", 3), ("NVIDIA A100-SXM4-80GB", "8.0", "0.8.0", 1)]
    assert tables[0]["measured"] == {"date": "2026-11-29"}
    assert sorted(line for t in tables for line in ct.cache_lines(t)) == sorted(ENTRIES)
    assert ct.tables_from_cache("no header\n" + "\n".join(ENTRIES)) == []


def test_table_names():
    assert ct.table_name("NVIDIA H200", "9.0", "0.8.0") == "nvidia-h200-sm90-cusparselt0.8.0.json"
    assert ct.table_name("NVIDIA A100-SXM4-80GB", "8.0", "0.8.1") == "nvidia-a100-sxm4-80gb-sm80-cusparselt0.8.1.json"


def test_a_seeded_cache_is_what_the_kernels_read(tmp_path):
    cache = tmp_path / "sub" / "cusparselt_tuning.txt"
    assert ct.seed_cache(cache, ct.tables_from_cache(CACHE)) == 4
    done = subprocess.run([str(_tool()), "read", str(cache)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == sorted(ENTRIES)
    assert not [p for p in cache.parent.iterdir() if p.name != cache.name], "a temporary file was left"


def test_an_existing_cache_is_never_touched(tmp_path):
    cache = tmp_path / "cusparselt_tuning.txt"
    cache.write_text(ct.CACHE_HEADER + "\n")
    assert ct.seed_cache(cache, ct.tables_from_cache(CACHE)) == 0
    assert cache.read_text() == ct.CACHE_HEADER + "\n"


def test_nothing_to_ship_writes_nothing_and_io_errors_do_not_raise(tmp_path):
    assert ct.seed_cache(tmp_path / "a.txt", []) == 0
    assert not (tmp_path / "a.txt").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert ct.seed_cache(blocker / "sub" / "c.txt", ct.tables_from_cache(CACHE)) == 0  # a file where a folder must be


def test_shipped_tables_skip_malformed_files(tmp_path):
    good = ct.tables_from_cache(CACHE)[0]
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else", "entries": []}))
    assert ct.shipped_tables(tmp_path) == [good]
    assert ct.shipped_tables(tmp_path / "absent") == []


def test_every_table_in_the_package_is_well_formed():
    for path in sorted(ct.TABLE_DIR.glob("*.json")):
        table = json.loads(path.read_text())
        assert path.name == ct.table_name(table["gpu"], table["sm"], table["cusparselt"])
        assert ct.cache_lines(table), path


def test_default_cache_path(monkeypatch, tmp_path):
    monkeypatch.delenv("ONNXSPARSE_CUSPARSELT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ct.default_cache_path() == tmp_path / "xdg" / "onnxsparse" / "cusparselt_tuning.txt"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ct.default_cache_path() == tmp_path / "home" / ".cache" / "onnxsparse" / "cusparselt_tuning.txt"
    assert ct.default_cache_path("/x/c.txt") == Path("/x/c.txt")
    assert ct.default_cache_path("off") is None
    monkeypatch.setenv("ONNXSPARSE_CUSPARSELT_CACHE", "0")
    assert ct.default_cache_path("/x/c.txt") is None


@pytest.mark.kernels
@pytest.mark.skipif(not library_available(), reason="the onnxsparse custom-op library is not built")
def test_session_options_seed_only_with_cuda_and_only_the_default_file(monkeypatch, tmp_path):
    from onnxsparse.session import session_options

    monkeypatch.delenv("ONNXSPARSE_CUSPARSELT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(ct, "shipped_tables", lambda directory=ct.TABLE_DIR: ct.tables_from_cache(CACHE))
    default = tmp_path / "onnxsparse" / "cusparselt_tuning.txt"
    named = tmp_path / "named.txt"
    session_options(cusparselt_cache=str(named))
    assert not named.exists()
    session_options()
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert sorted(default.read_text().splitlines()[2:]) == sorted(ENTRIES)
    else:
        assert not default.exists(), "seeded without CUDA"
