"""The cuSPARSELt tuning cache file (custom_ops/cuda/cusparselt/tuning_cache.cc), without a GPU.

The cache code is plain C++; ``onnxsparse_tuning_cache_check`` (built beside the library, CUDA or
not) exposes its parsing, reading and merged atomic rewriting. The GPU side (a process that tunes
and writes, the next that reads) is in tests/test_cuda.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
from conftest import REPO

HEADER = "# onnxsparse cuSPARSELt tuning cache v1"
ENTRY = "0.8.1\tNVIDIA H200\t9.0\tfloat16\t256\t512\t768\t512\t1\t35\t17\t8.53"
OTHER = "0.8.1\tNVIDIA H200\t9.0\tbfloat16\t256\t512\t768\t512\t0\t35\t3\t9.10"


_BUILT: list[Path] = []


def _tool() -> Path:
    """The check tool beside the library (cmake builds it there), else built once from the sources
    (an installed package has no build folder: CI tests that case), else a skip naming why."""
    library = os.environ.get("ONNXSPARSE_LIBRARY")
    if library:
        candidate = Path(library).resolve().parent / "onnxsparse_tuning_cache_check"
        if candidate.is_file():
            return candidate
    if _BUILT:
        return _BUILT[0]
    compiler = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if compiler is None:
        pytest.skip("onnxsparse_tuning_cache_check not built beside ONNXSPARSE_LIBRARY and no C++ compiler to build it")
    sources = REPO / "custom_ops"
    out = Path(tempfile.mkdtemp(prefix="onnxsparse-tcc-")) / "onnxsparse_tuning_cache_check"
    done = subprocess.run([compiler, "-std=c++17", "-O1", f"-I{sources}",
                           str(sources / "cuda" / "cusparselt" / "tuning_cache.cc"),
                           str(sources / "cuda" / "cusparselt" / "tuning_cache_check.cc"), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    _BUILT.append(out)
    return out


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(_tool()), *args], capture_output=True, text=True, timeout=60)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def _parse(line: str) -> str:
    return _run("parse", line).stdout.rstrip("\n")


def test_an_entry_round_trips():
    assert _parse(ENTRY) == ENTRY
    assert _parse(OTHER) == OTHER


@pytest.mark.parametrize("dtype", ["bfloat16", "int8", "int8s", "int8f"])
def test_every_element_type_round_trips(dtype):
    """int8: the int32 product; int8s / int8f: the int8 / float output scaled in cuSPARSELt's epilogue."""
    line = ENTRY.replace("float16", dtype)
    assert _parse(line) == line


@pytest.mark.parametrize("line", [
    "",
    "# a comment",
    ENTRY.replace("\t", " "),                      # not tab-separated
    ENTRY + "\textra",                             # 13 fields
    ENTRY.replace("float16", "float32"),           # no such dtype
    ENTRY.replace("float16", "int8x"),             # nor this one
    ENTRY.replace("\t256\t", "\t25x\t", 1),        # m not a number
    ENTRY.replace("0.8.1", "0.8"),                 # version needs three parts
    ENTRY.replace("0.8.1", "0.10.1"),              # minor above 9 cannot be encoded
    ENTRY.replace("\t9.0\t", "\t9\t"),             # sm needs two parts
    ENTRY.replace("\t1\t35\t", "\t2\t35\t"),       # bias is 0 or 1
    ENTRY.replace("\t35\t17\t", "\t35\t36\t"),     # a configuration beyond the range searched
    ENTRY.replace("\t35\t17\t", "\t35\t-1\t"),     # a negative configuration
    ENTRY.replace("8.53", "nan"),                  # a time that is not finite
    ENTRY.replace("NVIDIA H200", ""),              # no GPU name
])
def test_bad_lines_are_refused(line):
    assert _parse(line) == "bad"


def test_read_skips_bad_lines_and_needs_the_header(tmp_path):
    cache = tmp_path / "cache.txt"
    cache.write_text("\n".join([HEADER, "garbage", ENTRY, ENTRY.replace("\t35\t17\t", "\t35\t99\t"), OTHER, ""]))
    assert _run("read", str(cache)).stdout.splitlines() == [ENTRY, OTHER]
    cache.write_text("\n".join(["# some other format", ENTRY, ""]))
    assert _run("read", str(cache)).stdout == ""
    assert _run("read", str(tmp_path / "missing.txt")).stdout == ""


def test_store_merges_with_what_another_process_wrote(tmp_path):
    cache = tmp_path / "sub" / "dir" / "cache.txt"  # the directory is created
    _run("store", str(cache), ENTRY)
    lines = cache.read_text().splitlines()
    assert lines[0] == HEADER and lines[1].startswith("# cusparselt\tgpu") and lines[2:] == [ENTRY]
    # another process adds an entry (and garbage): a later store keeps the entry, drops the garbage
    cache.write_text(cache.read_text() + OTHER + "\nnot an entry\n")
    newer = ENTRY.replace("\t17\t8.53", "\t20\t7.00")
    _run("store", str(cache), newer)
    assert sorted(cache.read_text().splitlines()[2:]) == sorted([newer, OTHER])
    assert not list(cache.parent.glob("*.tmp.*"))  # no temporary file left behind


def test_store_into_an_unwritable_place_fails_cleanly(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = _run("store", str(blocker / "sub" / "cache.txt"), ENTRY, check=False)  # a directory under a file
    assert done.returncode == 1 and "cannot write" in done.stderr and "cannot create" in done.stderr, done.stderr
    done = _run("store", str(blocker / "cache.txt"), ENTRY, check=False)
    assert done.returncode == 1 and "Not a directory" in done.stderr, done.stderr


def test_store_refuses_a_bad_entry(tmp_path):
    done = _run("store", str(tmp_path / "c.txt"), "garbage", check=False)
    assert done.returncode == 2 and "not an entry" in done.stderr
    assert not (tmp_path / "c.txt").exists()


def test_a_reader_never_sees_a_partial_file(tmp_path):
    """While one process rewrites the file 300 times (growing), every read finds the header and
    only whole entries: the rewrite is atomic (temporary file renamed over the cache)."""
    cache = tmp_path / "cache.txt"
    entries = [ENTRY.replace("\t256\t", f"\t{16 * (i + 1)}\t", 1) for i in range(300)]
    _run("store", str(cache), entries[0])
    writer = threading.Thread(target=_run, args=("store", str(cache), *entries))
    writer.start()
    reads = 0
    while writer.is_alive() or reads == 0:
        text = cache.read_text()
        lines = text.splitlines()
        assert lines[0] == HEADER and text.endswith("\n"), text[-200:]
        assert all(line in entries for line in lines[2:]), lines[-1]
        reads += 1
    writer.join()
    assert sorted(cache.read_text().splitlines()[2:]) == sorted(entries)
    assert reads > 1


OWN = "0.8.1\tNVIDIA H200\t9.0\tfloat16\t256\t512\t768\t512\t1\t-1\t-1\t9.10"


def test_the_own_kernel_entry_round_trips_beside_the_configuration():
    """The own kernel's time of a problem is an entry of its own (max_id and config -1), so that
    inference chooses between it and cuSPARSELt's configuration from the file."""
    assert _parse(OWN) == OWN
    assert _parse(OWN.replace("\t-1\t-1\t", "\t35\t-1\t")) == "bad"  # -1 only as the own kernel's pair
    assert _parse(OWN.replace("\t-1\t-1\t", "\t-1\t3\t")) == "bad"
    assert _parse(OWN.replace("\t-1\t-1\t", "\t-2\t-2\t")) == "bad"


def test_the_own_kernel_entry_and_the_configuration_are_both_kept(tmp_path):
    cache = tmp_path / "cache.txt"
    _run("store", str(cache), ENTRY, OWN)
    assert sorted(_run("read", str(cache)).stdout.splitlines()) == sorted([ENTRY, OWN])


def _entry(process: int, i: int) -> str:
    return ENTRY.replace("\t256\t", f"\t{16 * (i + 1)}\t", 1).replace("\t512\t768\t", f"\t{512 + process}\t768\t", 1)


def test_concurrent_writers_lose_no_entry_and_corrupt_none(tmp_path):
    """Eight processes (two sessions on two GPUs, or one process per GPU, tuning at once) each store
    40 entries of their own, one rewrite each, into one file, plus a key they all write: the writers
    take turns on a lock file beside it, so the file ends with every entry, and a reader running
    meanwhile only ever sees the header and whole, valid entries."""
    cache = tmp_path / "cache.txt"
    shared_key = [OTHER.replace("\t3\t9.10", f"\t{p}\t9.{p:02d}") for p in range(8)]
    per_process = [[_entry(p, i) for i in range(40)] + [shared_key[p]] for p in range(8)]
    writers = [subprocess.Popen([str(_tool()), "store", str(cache), *entries], stderr=subprocess.PIPE, text=True)
               for entries in per_process]
    valid = {line for entries in per_process for line in entries}
    reads = 0
    while any(w.poll() is None for w in writers) or reads == 0:
        if cache.exists():
            lines = cache.read_text().splitlines()
            assert lines[0] == HEADER, lines[:1]
            assert all(line in valid for line in lines[2:]), [line for line in lines[2:] if line not in valid][:1]
            reads += 1
    for w in writers:
        assert w.wait(timeout=60) == 0, w.stderr.read()
    lines = cache.read_text().splitlines()[2:]
    expected = {line for entries in per_process for line in entries[:-1]}
    assert expected <= set(lines), f"{len(expected - set(lines))} entries lost"
    assert len([line for line in lines if line in shared_key]) == 1  # one value for the shared key
    assert len(lines) == len(expected) + 1
    assert not list(tmp_path.glob("*.tmp.*"))


def _line(m, n, k, config, *, dtype="float16", bias=1, ldy=None, max_id=35, gpu="NVIDIA H200", version="0.8.0"):
    return f"{version}\t{gpu}\t9.0\t{dtype}\t{m}\t{n}\t{k}\t{n if ldy is None else ldy}\t{bias}\t{max_id}\t{config}\t10.0"


def test_a_problem_the_file_lacks_borrows_the_nearest_tuned_configuration(tmp_path):
    """Instead of cuSPARSELt's default algorithm (0.24-0.64x of dense at M >= 128 on an H200), an
    untuned problem takes the configuration of the most similar tuned one: another M of the same
    weight first, then the nearest weight shape; never the own kernel's entry, another GPU,
    version, element type, bias, searched range or output kind."""
    cache = tmp_path / "c.txt"
    lines = [
        _line(128, 13824, 5120, 31), _line(2048, 13824, 5120, 6), _line(256, 13824, 5120, -1, max_id=-1),
        _line(128, 4096, 4096, 18), _line(512, 4096, 4096, 5, gpu="NVIDIA H100"),
        _line(512, 4096, 4096, 7, version="0.7.1"), _line(512, 4096, 4096, 9, dtype="bfloat16"),
        _line(512, 4096, 4096, 11, bias=0), _line(512, 4096, 4096, 12, max_id=20),
        _line(512, 4096, 4096, 13, ldy=-3136),
    ]
    cache.write_text("\n".join([HEADER, *lines]) + "\n")

    def nearest(line):
        found = _run("nearest", str(cache), line).stdout.strip()
        return found if found == "none" else found.split("\t")[10]

    assert nearest(_line(160, 13824, 5120, 0)) == "31"    # the same weight, M 160 nearest 128
    assert nearest(_line(1024, 13824, 5120, 0)) == "6"    # M 1024 nearer 2048 than 128 in log
    assert nearest(_line(300, 13824, 5120, 0)) == "31"    # 256's entry is the own kernel's: skipped
    assert nearest(_line(512, 4096, 4096, 0)) == "18"     # only the matching GPU/version/dtype/bias/range
    assert nearest(_line(512, 4096, 4096, 0, ldy=-784)) == "13"  # a conv's per-image form: its own kind
    assert nearest(_line(512, 4096, 4096, 0, gpu="NVIDIA A100")) == "none"
    assert nearest(_line(512, 8192, 8192, 0)) == "31"     # no 8192 weight: 13824x5120 (M 128) is nearer in log than 4096x4096
    assert nearest(_line(512, 2048, 2048, 0)) == "18"     # and for a small one, 4096x4096
    assert cache.read_text().count("\n") == len(lines) + 1  # a lookup never writes


def test_problems_tuned_for_a_weight_are_listed_for_its_plans_made_ahead(tmp_path):
    """The tuned problems of one weight shape (any M, ldy or searched range), which the library makes
    plans of at kernel creation: never the own kernel's entry, another GPU, version, element type,
    N, K or bias."""
    cache = tmp_path / "c.txt"
    lines = [
        _line(128, 4096, 1024, 31), _line(2048, 4096, 1024, 6), _line(2048, 4096, 1024, 7, max_id=20),
        _line(100352, 4096, 1024, 3, ldy=-3136), _line(256, 4096, 1024, -1, max_id=-1),
        _line(512, 4096, 1024, 5, gpu="NVIDIA H100"), _line(512, 4096, 1024, 7, version="0.7.1"),
        _line(512, 4096, 1024, 9, dtype="bfloat16"), _line(512, 4096, 1024, 11, bias=0),
        _line(512, 1024, 4096, 12), _line(512, 4096, 2048, 13),
    ]
    cache.write_text("\n".join([HEADER, *lines]) + "\n")
    found = _run("problems", str(cache), _line(1, 4096, 1024, 0)).stdout.split("\n")
    assert sorted(line for line in found if line) == sorted(["128\t4096\t35", "2048\t4096\t35", "2048\t4096\t20",
                                                            "100352\t-3136\t35"])
    assert _run("problems", str(cache), _line(1, 4096, 1024, 0, gpu="NVIDIA A100")).stdout == ""
    assert cache.read_text().count("\n") == len(lines) + 1  # a lookup never writes
