"""Shipped cuSPARSELt tuning tables: the configuration search's results for the GPUs measured here.

The CUDA kernels choose cuSPARSELt's algorithm configuration (and the own kernel against it) per
GEMM problem from the cuSPARSELt tuning cache file (DEVELOPERS.md, ``onnxsparse.cusparselt.cache``),
which ``onnxsparse tune --provider cuda`` fills on the user's machine. Without it they use
cuSPARSELt's default algorithm, measured 0.5-0.95x of dense on an H200. A shipped table holds the
entries that search wrote on one GPU model, for the problems of the benchmarks and of BERT/Llama-
style layers, one JSON file per (GPU name, compute capability, cuSPARSELt version) in
``onnxsparse/data/cusparselt/`` (written by ``benchmarks/cuda/ship_cusparselt_table.py``)::

    {"format": "onnxsparse cusparselt table v1", "gpu": "NVIDIA H200", "sm": "9.0",
     "cusparselt": "0.8.0", "measured": {...}, "entries": [
        {"dtype": "float16", "m": 256, "n": 4096, "k": 4096, "ldy": 4096, "bias": 0,
         "max_id": 35, "config": 17, "us": 31.2}, ...]}

(``max_id`` and ``config`` -1: the own kernel's time for that problem.) ``seed_cache`` writes every
shipped entry into a cache file that does not exist yet, in the kernels' format: the kernels key
entries by GPU name, compute capability and cuSPARSELt version, so entries of another GPU or
version are never used, and a problem the table lacks runs cuSPARSELt's default algorithm with the
one-time hint to run ``onnxsparse tune``. An existing cache file is the user's and is never touched.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

FORMAT = "onnxsparse cusparselt table v1"
CACHE_HEADER = "# onnxsparse cuSPARSELt tuning cache v1"
CACHE_COLUMNS = "# cusparselt\tgpu\tsm\tdtype\tm\tn\tk\tldy\tbias\tmax_id\tconfig\tus"
TABLE_DIR = Path(__file__).resolve().parent / "data" / "cusparselt"
_FIELDS = ("dtype", "m", "n", "k", "ldy", "bias", "max_id", "config", "us")


def table_name(gpu: str, sm: str, version: str) -> str:
    """The file name of a table: GPU name, compute capability and cuSPARSELt version."""
    slug = "".join(c if c.isalnum() else "-" for c in gpu.strip()).strip("-").lower()
    while "--" in slug:
        slug = slug.replace("--", "-")
    return f"{slug}-sm{sm.replace('.', '')}-cusparselt{version}.json"


def tables_from_cache(text: str, measured: dict | None = None) -> list[dict]:
    """The tables a cache file's text holds, one per (GPU, compute capability, version); lines the
    kernels would skip (not 12 fields, not numbers) are skipped here too."""
    lines = text.splitlines()
    if not lines or lines[0] != CACHE_HEADER:
        return []
    tables: dict[tuple[str, str, str], dict] = {}
    for line in lines[1:]:
        if not line or line.startswith("#"):
            continue
        f = line.split("\t")
        if len(f) != 12:
            continue
        try:
            entry = {"dtype": f[3], "m": int(f[4]), "n": int(f[5]), "k": int(f[6]), "ldy": int(f[7]),
                     "bias": int(f[8]), "max_id": int(f[9]), "config": int(f[10]), "us": float(f[11])}
        except ValueError:
            continue
        key = (f[1], f[2], f[0])
        table = tables.setdefault(key, {"format": FORMAT, "gpu": f[1], "sm": f[2], "cusparselt": f[0],
                                        "measured": dict(measured or {}), "entries": []})
        table["entries"].append(entry)
    for table in tables.values():
        table["entries"].sort(key=lambda e: (e["dtype"], e["n"], e["k"], e["ldy"], e["bias"], e["m"], e["max_id"]))
    return list(tables.values())


def cache_lines(table: dict) -> list[str]:
    """A table's entries as lines of the kernels' cache file."""
    if table.get("format") != FORMAT:
        raise ValueError(f"not a cuSPARSELt table ({FORMAT!r} expected, got {table.get('format')!r})")
    head = (table["cusparselt"], table["gpu"], table["sm"])
    out = []
    for e in table["entries"]:
        values = [e[k] for k in _FIELDS]
        out.append("\t".join([*head, values[0], *(str(int(v)) for v in values[1:8]), f"{float(values[8]):.2f}"]))
    return out


def shipped_tables(directory: Path = TABLE_DIR) -> list[dict]:
    """Every table in `directory` (unreadable or malformed files are left out)."""
    tables = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            table = json.loads(path.read_text())
            cache_lines(table)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        tables.append(table)
    return tables


def default_cache_path(configured: str | None = None) -> Path | None:
    """The cache file the kernels will use: ONNXSPARSE_CUSPARSELT_CACHE (it wins), else the
    session's onnxsparse.cusparselt.cache entry, else $XDG_CACHE_HOME (absolute) or ~/.cache, as the
    kernels resolve it; None for "0"/"off" or without a home."""
    value = os.environ.get("ONNXSPARSE_CUSPARSELT_CACHE") or configured
    if value:
        return None if value.strip().lower() in ("0", "off") else Path(value)
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "onnxsparse" / "cusparselt_tuning.txt"
    home = os.environ.get("HOME")
    return Path(home) / ".cache" / "onnxsparse" / "cusparselt_tuning.txt" if home else None


def seed_cache(path: str | os.PathLike, tables: list[dict] | None = None) -> int:
    """Writes the shipped entries into the cache file `path` when it does not exist (atomically: a
    temporary file renamed; another writer first wins). Returns the entries written, 0 when the file
    existed, there is nothing to ship, or it could not be written (never raises for IO)."""
    path = Path(path)
    tables = shipped_tables() if tables is None else tables
    lines = [line for table in tables for line in cache_lines(table)]
    if not lines or path.exists():
        return 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cusparselt_tuning.", suffix=".tmp")
        with os.fdopen(fd, "w") as out:
            out.write("\n".join([CACHE_HEADER, CACHE_COLUMNS, *lines]) + "\n")
        try:
            os.link(tmp, path)  # fails when another process wrote the file meanwhile: theirs stays
        except FileExistsError:
            return 0
        finally:
            os.unlink(tmp)
    except OSError:
        return 0
    return len(lines)
