"""Installing: one py3-none wheel, one build per checkout, ONNX Runtime's headers only from a pinned file.

The wheel itself is built, repaired and run on several Pythons by .ci/wheels (called by .ci/run);
these tests keep the configuration that makes it so from drifting.
"""

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
ORT_HEADERS = REPO / "custom_ops" / "cmake" / "OrtHeaders.cmake"


def _readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_one_wheel_serves_every_python():
    assert PYPROJECT["tool"]["scikit-build"]["wheel"]["py-api"] == "py3"
    assert PYPROJECT["project"]["requires-python"] == ">=3.10"


def test_readme_second_command_installs_the_test_requirements_without_building():
    second = _readme_commands()[1]
    installs = [step.strip() for step in second.split("&&") if "pip install" in step]
    assert "python3 -m pip install --group test" in installs, second
    # Installing the project again (".", ".[test]") would build the library a second time.
    for step in installs:
        assert not re.search(r"""install\s+(-\S+\s+)*["']?\.(\[|["']?\s*$)""", step), step


def test_test_group_equals_test_extra():
    assert PYPROJECT["dependency-groups"]["test"] == PYPROJECT["project"]["optional-dependencies"]["test"]


def test_cibuildwheel_builds_on_manylinux_2_28_and_runs_the_main_job():
    cibw = PYPROJECT["tool"]["cibuildwheel"]
    assert cibw["manylinux-x86_64-image"] == "manylinux_2_28"
    assert len(cibw["build"]) >= 2
    job = " && ".join(cibw["test-command"])
    assert "onnxsparse compile" in job and "onnxsparse verify" in job


def test_ci_repairs_the_wheel_and_runs_it_without_a_compiler():
    assert "bash .ci/wheels" in (REPO / ".ci" / "run").read_text()
    wheels = (REPO / ".ci" / "wheels").read_text()
    assert "auditwheel repair" in wheels and "--only-binary=:all:" in wheels
    assert 'export PATH="$venv/bin"' in wheels


def test_headers_come_from_a_pinned_file_not_package_metadata():
    for path in (REPO / "custom_ops").rglob("*"):
        if path.suffix in {".cmake", ".sh", ".txt"} and path.is_file():
            text = path.read_text()
            assert "Trusted: yes" not in text and "apt-get" not in text, path
    pinned = re.search(r'ONNXSPARSE_ORT_DEB_SHA256 "([0-9a-f]+)"', ORT_HEADERS.read_text())
    assert pinned and len(pinned.group(1)) == 64


needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")


def _env(tmp_path: Path, mirror: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ORT_INCLUDE_DIR"}
    env.update(ONNXSPARSE_DEBIAN_MIRROR=mirror, XDG_CACHE_HOME=str(tmp_path / "cache"), HOME=str(tmp_path))
    return env


@needs_cmake
def test_header_fetch_refuses_a_file_whose_hash_is_not_the_pinned_one(tmp_path):
    deb = re.search(r'ONNXSPARSE_ORT_DEB "([^"]+)"', ORT_HEADERS.read_text()).group(1)
    fake = tmp_path / "mirror" / deb
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"!<arch>\nnot the package\n")
    dest = tmp_path / "include"
    result = subprocess.run(
        ["cmake", f"-DDEST={dest}", "-P", str(ORT_HEADERS)],
        env=_env(tmp_path, (tmp_path / "mirror").as_uri()), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "is not the pinned" in result.stderr
    assert not dest.exists()


@needs_cmake
@pytest.mark.skipif(
    any(Path(d, "onnxruntime", "onnxruntime_c_api.h").exists() for d in ("/usr/include", "/usr/local/include")),
    reason="the system's ONNX Runtime headers would be used",
)
def test_a_build_without_headers_stops_with_one_line_saying_what_to_set(tmp_path):
    result = subprocess.run(
        ["cmake", "-S", str(REPO / "custom_ops"), "-B", str(tmp_path / "build"), "-DONNXSPARSE_CUDA=OFF"],
        env=_env(tmp_path, (tmp_path / "no-mirror").as_uri()), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "onnxsparse:" in line]
    assert len(lines) == 1, result.stderr
    assert "could not download" in lines[0] and "set ORT_INCLUDE_DIR=" in lines[0]


def _configure(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    headers = tmp_path / "ort"
    headers.mkdir(exist_ok=True)
    (headers / "onnxruntime_c_api.h").write_text("#define ORT_API_VERSION 21\n")  # configure only reads the path
    return subprocess.run(["cmake", "-S", str(REPO / "custom_ops"), "-B", str(tmp_path / "build"),
                           f"-DORT_INCLUDE_DIR={headers}", *args],
                          env={k: v for k, v in os.environ.items() if k not in ("ONNXSPARSE_CUDA", "CUDACXX")},
                          capture_output=True, text=True, timeout=300)


def _gpu_driver_here() -> bool:
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/version").exists() or \
        any(Path(d, "libcuda.so.1").exists() for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib/wsl/lib"))


@needs_cmake
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc here: the default build cannot consider CUDA")
@pytest.mark.skipif(_gpu_driver_here(), reason="an NVIDIA driver is present: the default build compiles CUDA here")
def test_default_build_skips_cuda_without_a_driver_and_says_how_to_force_it(tmp_path):
    result = _configure(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "onnxsparse:" in line and "CUDA" in line]
    assert len(lines) == 1, result.stdout
    assert "no NVIDIA driver" in lines[0] and "ONNXSPARSE_CUDA=ON" in lines[0]
    cache = (tmp_path / "build" / "CMakeCache.txt").read_text()
    assert "CMAKE_CUDA_COMPILER:" not in cache, "CUDA was enabled"  # not even probed


@needs_cmake
def test_an_unknown_cuda_mode_is_refused_in_one_line(tmp_path):
    result = _configure(tmp_path, "-DONNXSPARSE_CUDA=maybe")
    assert result.returncode != 0
    assert "ONNXSPARSE_CUDA='maybe': use AUTO, ON or OFF" in result.stderr
