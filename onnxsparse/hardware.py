"""What decides a kernel's speed on this machine, as a key: ``HardwareKey``.

Measurements carry their machine (TensorRT's timing cache is keyed the same way): ``onnxsparse
tune`` stores its timings under the key of the machine that took them, and ``compile --target``
uses a measurement only under a key that matches the machine the model is compiled for.

A CPU key holds the processor (model name, vendor, family/model/stepping), the instruction-set
path the library's kernels take (asked of the library: it logs its choice at VERBOSE when a
session creates a kernel), the thread count, the ONNX Runtime version and the library (package
version and a hash of the built ``.so``, so that rebuilt kernels invalidate old timings). A CUDA
key holds the GPU name and compute capability instead of the processor and ISA.

``matches_hardware`` compares only the hardware fields (what a shipped table can promise);
``key.id`` compares everything (what a tuned measurement promises).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field, fields

PROVIDERS = ("cpu", "cuda")
# The fields that describe the hardware alone (a shipped table is keyed by these).
HARDWARE_FIELDS = {
    "cpu": ("cpu", "vendor", "family", "model", "isa"),
    "cuda": ("gpu", "compute_capability"),
}


@dataclass(frozen=True)
class HardwareKey:
    """The machine a measurement belongs to. Empty strings are fields that do not apply."""

    provider: str  # "cpu" or "cuda"
    cpu: str = ""  # model name, e.g. "AMD EPYC 9654 96-Core Processor"
    vendor: str = ""  # "AuthenticAMD", "GenuineIntel"
    family: int = 0
    model: int = 0
    stepping: int = 0
    isa: str = ""  # the library's CPU kernel path: avx512, avx2, portable
    threads: int = 0  # intra-op threads (0: ONNX Runtime's default, all cores)
    gpu: str = ""  # "NVIDIA H200"
    compute_capability: str = ""  # "9.0"
    onnxruntime: str = ""
    library: str = ""  # "0.1.0+<hash of the .so>"
    # ONNX Runtime's intra-op threads spin between ops (its default) or sleep
    # (session.intra_op.allow_spinning=0, `tune --no-spinning`). Sleeping threads pay a wake-up at
    # every parallel op, which changes the dense/sparse ratio and the whole-model check, so timings
    # taken one way are not the other's. It decides nothing on CUDA or with one thread (no pool
    # threads): there it is always True, so such keys stay equal.
    spinning: bool = True

    def __post_init__(self) -> None:
        if self.provider != "cpu" or self.threads == 1:
            object.__setattr__(self, "spinning", True)

    @property
    def id(self) -> str:
        """One line that names every field that decides speed (the cache's key)."""
        if self.provider == "cuda":
            hw = f"cuda:{self.gpu}:sm{self.compute_capability}"
        else:
            hw = f"cpu:{self.cpu}:{self.family}/{self.model}/{self.stepping}:{self.isa}:t{self.threads}"
            if not self.spinning:  # absent when spinning: keys written before this field keep their ids
                hw += ":nospin"
        return f"{hw}:ort{self.onnxruntime}:onnxsparse{self.library}"

    @property
    def short(self) -> str:
        """The hardware only, for messages: "AMD EPYC 9654 (family 25 model 17), avx512, 1 thread"."""
        if self.provider == "cuda":
            return f"{self.gpu} (sm {self.compute_capability})" if self.gpu else "this machine (no GPU found)"
        threads = "default threads" if self.threads == 0 else f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        if not self.spinning:
            threads += " (not spinning)"
        return f"{self.cpu} (family {self.family} model {self.model}), {self.isa}, {threads}"

    def hardware(self) -> dict:
        """The hardware fields alone (what ``matches_hardware`` compares)."""
        return {name: getattr(self, name) for name in HARDWARE_FIELDS[self.provider]}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "HardwareKey":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def matches_hardware(key: HardwareKey, description: dict) -> bool:
    """Whether ``description`` (a shipped table's ``hardware`` entry) names the hardware of ``key``.

    Every hardware field the description gives must equal the key's; a description without any of
    them matches nothing (an unkeyed table is never applied).
    """
    if description.get("provider", key.provider) != key.provider:
        return False
    given = [name for name in HARDWARE_FIELDS[key.provider] if name in description]
    if not given:
        return False
    return all(_same(getattr(key, name), description[name]) for name in given)


def _same(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return str(a).strip().lower() == str(b).strip().lower()
    return a == b


def describe(description: dict) -> str:
    """A shipped table's hardware entry as words."""
    if description.get("provider") == "cuda":
        return f"{description.get('gpu', '?')} (sm {description.get('compute_capability', '?')})"
    return (f"{description.get('cpu', '?')} (family {description.get('family', '?')} model "
            f"{description.get('model', '?')}), {description.get('isa', '?')}")


# --- this machine -------------------------------------------------------------------------------


def host_key(provider: str = "cpu", threads: int = 0, cpu_isa: str | None = None, spinning: bool = True) -> HardwareKey:
    """The key of this machine for ``provider``.

    ``cpu_isa``: the ISA the sessions will force (``onnxsparse.session_options(cpu_isa=...)``);
    None: what the library picks by itself (or what ``ONNXSPARSE_CPU_ISA`` forces). ``spinning``:
    whether ONNX Runtime's intra-op threads spin between ops (``HardwareKey.spinning``).
    """
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; expected one of {', '.join(PROVIDERS)}")
    import onnxruntime

    common = {"provider": provider, "threads": int(threads), "onnxruntime": onnxruntime.__version__,
              "library": library_version(), "spinning": bool(spinning)}
    if provider == "cuda":
        gpu, capability = gpu_info()
        return HardwareKey(gpu=gpu, compute_capability=capability, **common)
    cpu = cpu_info()
    return HardwareKey(cpu=cpu["model_name"], vendor=cpu["vendor"], family=cpu["family"], model=cpu["model"],
                       stepping=cpu["stepping"], isa=library_cpu_isa(cpu_isa), **common)


def host_provider() -> str:
    """The provider this machine runs best: cuda where ONNX Runtime has it and a GPU answers."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers() and gpu_info()[0]:
        return "cuda"
    return "cpu"


@functools.lru_cache(maxsize=None)
def cpu_info(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """The first processor's model name, vendor, family, model and stepping (decimal, as Linux gives them)."""
    info = {"model_name": platform.processor() or platform.machine(), "vendor": "", "family": 0, "model": 0,
            "stepping": 0, "flags": frozenset()}
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            text = f.read().split("\n\n", 1)[0]
    except OSError:
        return info
    return parse_cpuinfo(text, info)


def parse_cpuinfo(text: str, defaults: dict | None = None) -> dict:
    """The fields of one processor block of /proc/cpuinfo."""
    info = dict(defaults or {"model_name": "", "vendor": "", "family": 0, "model": 0, "stepping": 0,
                             "flags": frozenset()})
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name, value = name.strip(), value.strip()
        if name == "model name":
            info["model_name"] = re.sub(r"\s+", " ", value)
        elif name == "vendor_id":
            info["vendor"] = value
        elif name == "cpu family" and value.isdigit():
            info["family"] = int(value)
        elif name == "model" and value.isdigit():
            info["model"] = int(value)
        elif name == "stepping" and value.isdigit():
            info["stepping"] = int(value)
        elif name == "flags":
            info["flags"] = frozenset(value.split())
    return info


def isa_from_flags(flags: frozenset) -> str:
    """The best path the CPU kernels have for these cpuid flags (custom_ops/cpu/cpu_isa.cc's rule)."""
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "avx512"
    if {"avx2", "fma", "f16c"} <= flags:
        return "avx2"
    return "portable"


_ISA_LINE = re.compile(r"CPU kernels use (\w+)")


def library_cpu_isa(cpu_isa: str | None = None) -> str:
    """The ISA path the library's CPU kernels take on this machine, asked of the library.

    A session with one sparse layer is created at VERBOSE severity and the library's own line
    ("CPU kernels use avx2 ...") is read from ONNX Runtime's log (stderr, captured). A library that
    does not log it is answered from cpuid and the forced ISA (the library's documented rule).
    """
    return _library_cpu_isa(cpu_isa or "", os.environ.get("ONNXSPARSE_CPU_ISA", ""), _library_path_or_empty())


@functools.lru_cache(maxsize=None)
def _library_cpu_isa(cpu_isa: str, env_isa: str, library: str) -> str:
    logged = _logged_cpu_isa(cpu_isa) if library else None
    if logged:
        return logged
    best = isa_from_flags(cpu_info()["flags"])
    wanted = env_isa or cpu_isa
    order = ("portable", "avx2", "avx512")
    if wanted in order and order.index(wanted) <= order.index(best):
        return wanted
    return best


def _logged_cpu_isa(cpu_isa: str) -> str | None:
    import onnxruntime as ort

    from . import session

    try:
        options = session.session_options(cpu_isa=cpu_isa) if cpu_isa else session.session_options()
    except TypeError:  # a session_options without run-time keywords
        options = session.session_options()
    options.log_severity_level = 0
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        try:
            os.dup2(captured.fileno(), 2)
            ort.InferenceSession(_probe_model(), options, providers=["CPUExecutionProvider"])
        except Exception:
            return None
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode(errors="replace")
    found = _ISA_LINE.findall(text)
    return found[-1] if found else None


def _probe_model() -> bytes:
    """One MatMulCompress fed by an unfolded CompressOp: the smallest model that creates a CPU kernel."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from .spec import COMPRESS_OP, DOMAIN, MATMUL_COMPRESS, OPSET_VERSION

    weight = np.zeros((8, 8), np.float32)
    weight[::4] = 1.0  # one non-zero per group of 4 along K
    graph = helper.make_graph(
        [helper.make_node(COMPRESS_OP, ["w"], ["values", "index"], domain=DOMAIN, layout="kn"),
         helper.make_node(MATMUL_COMPRESS, ["x", "values", "index"], ["y"], domain=DOMAIN, name="probe")],
        "isa_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, OPSET_VERSION)])
    model.ir_version = 10
    return model.SerializeToString()


def _library_path_or_empty() -> str:
    from ._library import get_library_path
    from .errors import OnnxSparseError

    try:
        return get_library_path()
    except OnnxSparseError:
        return ""


def library_version() -> str:
    """The package version and the first 12 hex digits of the built library's SHA-256."""
    from . import __version__

    path = _library_path_or_empty()
    return f"{__version__}+{_file_hash(path, os.stat(path).st_mtime_ns)}" if path else __version__


@functools.lru_cache(maxsize=None)
def _file_hash(path: str, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


@functools.lru_cache(maxsize=None)
def gpu_info() -> tuple[str, str]:
    """(name, compute capability) of GPU 0 from nvidia-smi; ("", "") without one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "", ""
    try:
        out = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader", "-i", "0"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "", ""
    name, _, capability = out.strip().splitlines()[0].rpartition(",") if out.strip() else ("", "", "")
    return name.strip(), capability.strip()
