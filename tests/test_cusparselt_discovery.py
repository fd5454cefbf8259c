"""cuSPARSELt installed from pip is found from the Python side (no GPU needed): the session options
pass the wheel's ``libcusparseLt.so.0`` to the library as ``onnxsparse.cusparselt.library``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import onnxsparse
from onnxsparse import _library
from onnxsparse.session import RUNTIME_OPTIONS

KEY = RUNTIME_OPTIONS["cusparselt_library"]


def _fake_wheel(root: Path, layout: str) -> Path:
    lib = root / layout
    lib.parent.mkdir(parents=True, exist_ok=True)
    lib.write_bytes(b"\x7fELF fake")
    return lib.resolve()


@pytest.mark.parametrize("layout", _library.CUSPARSELT_LAYOUTS)
def test_each_wheel_layout_is_found(tmp_path, layout):
    lib = _fake_wheel(tmp_path / "site-packages", layout)
    assert _library.find_cusparselt([str(tmp_path / "elsewhere"), str(tmp_path / "site-packages")]) == str(lib)


def test_the_cuda13_wheel_wins_over_the_cuda12_one(tmp_path):
    cu12 = _fake_wheel(tmp_path / "a", "nvidia/cusparselt/lib/libcusparseLt.so.0")
    cu13 = _fake_wheel(tmp_path / "b", "nvidia/cu13/lib/libcusparseLt.so.0")
    assert _library.find_cusparselt([str(tmp_path / "a"), str(tmp_path / "b")]) == str(cu13)
    assert _library.find_cusparselt([str(tmp_path / "a")]) == str(cu12)


def test_nothing_installed_finds_nothing(tmp_path):
    (tmp_path / "nvidia" / "cu13" / "lib").mkdir(parents=True)  # the folder without the library
    assert _library.find_cusparselt([str(tmp_path)]) is None


def test_the_import_path_is_searched(tmp_path, monkeypatch):
    lib = _fake_wheel(tmp_path, "nvidia/cu13/lib/libcusparseLt.so.0")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    assert _library.find_cusparselt() == str(lib)


@pytest.mark.kernels
def test_session_options_pass_the_found_library(tmp_path, monkeypatch):
    lib = _fake_wheel(tmp_path, "nvidia/cu13/lib/libcusparseLt.so.0")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    options = onnxsparse.session_options()
    assert options.get_session_config_entry(KEY) == str(lib)


@pytest.mark.kernels
def test_a_library_the_caller_names_is_kept(tmp_path, monkeypatch):
    _fake_wheel(tmp_path, "nvidia/cu13/lib/libcusparseLt.so.0")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    options = onnxsparse.session_options(cusparselt_library="/opt/mine/libcusparseLt.so.0")
    assert options.get_session_config_entry(KEY) == "/opt/mine/libcusparseLt.so.0"
    import onnxruntime as ort

    own = ort.SessionOptions()
    own.add_session_config_entry(KEY, "/opt/entry/libcusparseLt.so.0")
    assert onnxsparse.session_options(own).get_session_config_entry(KEY) == "/opt/entry/libcusparseLt.so.0"


@pytest.mark.kernels
def test_no_wheel_sets_no_entry(tmp_path, monkeypatch):
    monkeypatch.setattr(_library, "_package_roots", lambda: [str(tmp_path)])
    options = onnxsparse.session_options()
    with pytest.raises(Exception):  # onnxruntime raises for an absent key
        if not options.get_session_config_entry(KEY):
            raise KeyError(KEY)


def test_the_cuda_extra_brings_the_gpu_runtime_and_cusparselt():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    extra = pyproject["project"]["optional-dependencies"]["cuda"]
    names = {dep.split(">")[0].split("=")[0].split("[")[0].strip() for dep in extra}
    assert {"onnxruntime-gpu", "nvidia-cusparselt-cu13"} <= names
