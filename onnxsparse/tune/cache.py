"""The per-machine tuning cache: one JSON file, its entries keyed by ``HardwareKey.id``.

    {"format": "onnxsparse-tune", "version": 1,
     "machines": {
       "<key id>": {
         "key": {...HardwareKey fields...},
         "layers": {"<problem key>": {"problem": {...}, "base": "...", "dense_us": 812.0,
                                       "sparse_us": 540.1, "ratio": 1.503, "ratio_low": 1.47,
                                       "ratio_high": 1.52, "pairs": 31, "copies": 1, "weight_bytes": 8388608,
                                       "measured": "..."}},
         "models": {"<model fingerprint>": {"name": "...", "shapes": {...}, "dense_layers": [...],
                                             "dense_ms": ..., "compiled_ms": ..., "ratio": ..., ...}}}}}

A key holds everything that decides speed (processor, kernel ISA path, threads and whether they
spin between ops, ONNX Runtime and library version), so a measurement is only ever read back on the machine and software that took
it; a rebuilt library or another thread count starts a new entry. The file is written atomically
(a temporary file renamed over it) after merging with what is on disk, so concurrent tunes of
different models keep each other's entries. Default place: ``$XDG_CACHE_HOME/onnxsparse/tune.json``,
else ``~/.cache/onnxsparse/tune.json``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

from ..errors import OnnxSparseError
from ..hardware import HardwareKey

logger = logging.getLogger(__name__)

FORMAT, VERSION = "onnxsparse-tune", 1
FILE_NAME = "tune.json"


def default_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or (str(Path.home() / ".cache") if os.environ.get("HOME") else "")
    if not base:
        raise OnnxSparseError("no place for the tuning cache: set XDG_CACHE_HOME or HOME, or give --cache PATH")
    return Path(base) / "onnxsparse" / FILE_NAME


class TuneCache:
    """The cache file's contents; ``save()`` merges them into the file atomically."""

    def __init__(self, path: str | os.PathLike | None = None, data: dict | None = None):
        self.path = Path(path) if path is not None else default_path()
        self.data = data if data is not None else _empty()
        self.warning: str | None = None  # why the file on disk was not read (it is then left alone)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "TuneCache":
        cache = cls(path)
        if cache.path.is_file():
            data, why = _read(cache.path)
            if why:
                cache.warning = f"tuning cache {cache.path} ignored: {why}"
                logger.warning(cache.warning)
            else:
                cache.data = data
        return cache

    # --- reading ---
    def machine(self, key: HardwareKey) -> dict | None:
        return self.data["machines"].get(key.id)

    def machines(self) -> list[HardwareKey]:
        return [HardwareKey.from_dict(entry.get("key", {})) for entry in self.data["machines"].values()]

    def layer(self, key: HardwareKey, problem_key: str) -> dict | None:
        entry = self.machine(key)
        return None if entry is None else entry["layers"].get(problem_key)

    def layers(self, key: HardwareKey) -> dict:
        entry = self.machine(key)
        return {} if entry is None else entry["layers"]

    def model(self, key: HardwareKey, fingerprint: str) -> dict | None:
        entry = self.machine(key)
        return None if entry is None else entry["models"].get(fingerprint)

    # --- writing ---
    def _entry(self, key: HardwareKey) -> dict:
        return self.data["machines"].setdefault(key.id, {"key": key.to_dict(), "layers": {}, "models": {}})

    def put_layer(self, key: HardwareKey, problem_key: str, record: dict) -> None:
        self._entry(key)["layers"][problem_key] = {**record, "measured": _now()}

    def put_model(self, key: HardwareKey, fingerprint: str, record: dict) -> None:
        self._entry(key)["models"][fingerprint] = {**record, "measured": _now()}

    def save(self) -> Path:
        """Merge into the file on disk (entries of this object win) and rename over it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        merged = _empty()
        if self.path.is_file():
            on_disk, why = _read(self.path)
            if not why:
                merged = on_disk
        for key_id, entry in self.data["machines"].items():
            target = merged["machines"].setdefault(key_id, {"key": entry["key"], "layers": {}, "models": {}})
            target["key"] = entry["key"]
            target["layers"].update(entry["layers"])
            target["models"].update(entry["models"])
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(merged, f, indent=1, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.data = merged
        return self.path


def _empty() -> dict:
    return {"format": FORMAT, "version": VERSION, "machines": {}}


def _read(path: Path) -> tuple[dict, str | None]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _empty(), f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return _empty(), "not an onnxsparse tuning cache"
    if data.get("version") != VERSION:
        return _empty(), f"version {data.get('version')} (this onnxsparse reads version {VERSION})"
    machines = data.get("machines")
    if not isinstance(machines, dict):
        return _empty(), "no 'machines' table"
    for entry in machines.values():
        if not isinstance(entry, dict):
            return _empty(), "a machine entry is not a table"
        entry.setdefault("key", {})
        entry.setdefault("layers", {})
        entry.setdefault("models", {})
    return data, None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
