"""A Triton Inference Server model repository for a compiled model (``onnxsparse triton``).

``write_triton_repository`` lays out what Triton's ONNX Runtime backend loads (docs/serving.md):

    REPOSITORY/NAME/config.pbtxt               backend "onnxruntime", inputs, outputs, instances,
                                               model_operations { op_library_filename: <absolute> }
    REPOSITORY/NAME/libonnxsparse_ops.so       the custom-op library (a copy)
    REPOSITORY/NAME/cusparselt_tuning.txt      the cuSPARSELt tuning cache, when one is given
    REPOSITORY/NAME/1/<model>.onnx             the compiled model, byte for byte
    REPOSITORY/NAME/1/<its external data>      at the locations the model names

Triton wants the op library's path absolute, as the server sees it: ``mount`` is where the
repository is mounted there (``/models`` in NVIDIA's examples); by default the repository's own
absolute path here. The backend registers the library on plain session options, so the library's
``onnxsparse.*`` session config entries cannot be set from ``config.pbtxt``; the server's
environment sets them instead (``ONNXSPARSE_CUSPARSELT_CACHE`` and the other overrides of
DEVELOPERS.md), and ``environment`` in the result says which.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import onnx

from ._library import LIBRARY_NAME, get_library_path
from .errors import OnnxSparseError
from .io import external_data_files, load_model_graph
from .spec import DOMAIN
from .triton_config import ONNX_TO_TRITON, parse_model_config

logger = logging.getLogger(__name__)

TUNING_CACHE_NAME = "cusparselt_tuning.txt"
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}


@dataclass
class InstanceGroup:
    """``count`` copies of the model (one ONNX Runtime session each) on CPU, or on each of ``gpus``."""

    kind: str  # "cpu" or "gpu"
    count: int = 1
    gpus: list[int] = field(default_factory=list)


@dataclass
class TritonRepository:
    model_dir: Path  # REPOSITORY/NAME
    config: Path
    model: Path  # REPOSITORY/NAME/VERSION/<model>.onnx
    library: Path
    op_library_filename: str  # as written in config.pbtxt (the path on the server)
    sparse_ops: int
    environment: dict[str, str]  # to set in the server's environment

    def to_dict(self) -> dict:
        return {"model_dir": str(self.model_dir), "config": str(self.config), "model": str(self.model),
                "library": str(self.library), "op_library_filename": self.op_library_filename,
                "sparse_ops": self.sparse_ops, "environment": self.environment}


def _dims(value_info: onnx.ValueInfoProto) -> list[int]:
    shape = value_info.type.tensor_type.shape
    if not value_info.type.tensor_type.HasField("shape"):
        raise OnnxSparseError(f"'{value_info.name}' has no shape (rank unknown); Triton needs its dims")
    return [d.dim_value if d.HasField("dim_value") else -1 for d in shape.dim]


def _tensors(model: onnx.ModelProto, max_batch_size: int) -> tuple[list[tuple], list[tuple]]:
    initializers = {t.name for t in model.graph.initializer}
    sides = []
    for values in (model.graph.input, model.graph.output):
        side = []
        for value in values:
            if value.name in initializers:
                continue
            if not value.type.HasField("tensor_type"):
                raise OnnxSparseError(f"'{value.name}' is not a tensor; Triton's ONNX Runtime backend serves tensors")
            elem = value.type.tensor_type.elem_type
            if elem not in ONNX_TO_TRITON:
                raise OnnxSparseError(f"'{value.name}': element type "
                                      f"{onnx.TensorProto.DataType.Name(elem)} has no Triton data type")
            dims = _dims(value)
            if max_batch_size > 0:
                if not dims or dims[0] != -1:
                    raise OnnxSparseError(f"--max-batch-size needs a dynamic first dimension; '{value.name}' has "
                                          f"shape {dims} (export the model with a batch dimension, or use 0)")
                dims = dims[1:]
            side.append((value.name, ONNX_TO_TRITON[elem], dims))
        sides.append(side)
    return sides[0], sides[1]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_text(name: str, model_file: str, op_library: str, inputs: list[tuple], outputs: list[tuple],
                instances: list[InstanceGroup], max_batch_size: int = 0, threads: int | None = None) -> str:
    """The ``config.pbtxt`` for Triton's ONNX Runtime backend."""
    lines = [f"name: {_quote(name)}", 'backend: "onnxruntime"', f"max_batch_size: {max_batch_size}",
             f"default_model_filename: {_quote(model_file)}"]
    for key, tensors in (("input", inputs), ("output", outputs)):
        lines.append(f"{key} [")
        for i, (tensor, data_type, dims) in enumerate(tensors):
            comma = "," if i + 1 < len(tensors) else ""
            lines.append(f"  {{ name: {_quote(tensor)} data_type: {data_type} dims: [ {', '.join(map(str, dims))} ] }}{comma}")
        lines.append("]")
    lines.append("instance_group [")
    for i, group in enumerate(instances):
        gpus = f" gpus: [ {', '.join(map(str, group.gpus))} ]" if group.gpus else ""
        comma = "," if i + 1 < len(instances) else ""
        lines.append(f"  {{ kind: {KINDS[group.kind]} count: {group.count}{gpus} }}{comma}")
    lines.append("]")
    if max_batch_size > 0:
        lines.append("dynamic_batching { }")
    if threads:
        lines.append(f'parameters {{ key: "intra_op_thread_count" value: {{ string_value: "{threads}" }} }}')
    lines.append(f"model_operations {{ op_library_filename: {_quote(op_library)} }}")
    return "\n".join(lines) + "\n"


def _check_instances(instances: list[InstanceGroup]) -> None:
    if not instances:
        raise OnnxSparseError("no instance group: give at least one CPU or GPU instance")
    for group in instances:
        if group.kind not in KINDS:
            raise OnnxSparseError(f"instance kind '{group.kind}': use cpu or gpu")
        if group.count < 1:
            raise OnnxSparseError(f"{group.kind} instance count {group.count}: must be at least 1")
        if group.kind == "cpu" and group.gpus:
            raise OnnxSparseError("CPU instances take no GPU list")
        if any(gpu < 0 for gpu in group.gpus):
            raise OnnxSparseError(f"GPU ids must be 0 or more, got {group.gpus}")


def write_triton_repository(model: str | os.PathLike, repository: str | os.PathLike, name: str | None = None, *,
                            instances: list[InstanceGroup] | None = None, max_batch_size: int = 0,
                            threads: int | None = None, mount: str | None = None, version: int = 1,
                            library: str | os.PathLike | None = None,
                            tuning_cache: str | os.PathLike | None = None) -> TritonRepository:
    """Write REPOSITORY/NAME for the compiled model at ``model`` (see the module's docstring).

    REPOSITORY/NAME must not exist yet; it is written beside it and renamed into place at the end,
    so a failure leaves nothing behind."""
    model = Path(model)
    graph = load_model_graph(model)  # checks the file and that its external data is inside its folder
    name = name or model.name.split(".")[0]
    if not name or "/" in name or name.startswith("."):
        raise OnnxSparseError(f"model name '{name}' must be a plain folder name")
    if version < 1:
        raise OnnxSparseError(f"version {version}: Triton's versions are 1 or more")
    if max_batch_size < 0:
        raise OnnxSparseError(f"max batch size {max_batch_size}: must be 0 (no batching) or more")
    if threads is not None and threads < 1:
        raise OnnxSparseError(f"threads {threads}: must be 1 or more")
    instances = instances or [InstanceGroup("cpu", 1)]
    _check_instances(instances)
    if mount is not None and not PurePosixPath(mount).is_absolute():
        raise OnnxSparseError(f"mount '{mount}' must be an absolute path (where the server sees the repository)")
    library = Path(library) if library is not None else Path(get_library_path())
    if not library.is_file():
        raise OnnxSparseError(f"{library}: no such custom-op library")
    if any(group.kind == "gpu" for group in instances) and b"CUDAExecutionProvider" not in library.read_bytes():
        logger.warning("%s has no CUDA kernels (built without CUDA): on GPU instances ONNX Runtime runs the "
                       "sparse ops on the CPU; build the library with ONNXSPARSE_CUDA=ON", library)
    if tuning_cache is not None and not Path(tuning_cache).is_file():
        raise OnnxSparseError(f"{tuning_cache}: no such tuning cache file")
    inputs, outputs = _tensors(graph, max_batch_size)

    repository = Path(repository)
    final = repository / name
    if final.exists():
        raise OnnxSparseError(f"{final} exists; remove it or choose another name")
    served_root = PurePosixPath(mount) / name if mount is not None else PurePosixPath(final.resolve())
    op_library = str(served_root / LIBRARY_NAME)
    environment = {}
    if tuning_cache is not None:
        environment["ONNXSPARSE_CUSPARSELT_CACHE"] = str(served_root / TUNING_CACHE_NAME)

    repository.mkdir(parents=True, exist_ok=True)
    staging = repository / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        version_dir = staging / str(version)
        version_dir.mkdir(parents=True)
        shutil.copyfile(model, version_dir / model.name)
        base = model.parent.resolve()
        for data in external_data_files(model):
            target = version_dir / data.relative_to(base)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data, target)
        shutil.copyfile(library, staging / LIBRARY_NAME)
        if tuning_cache is not None:
            shutil.copyfile(tuning_cache, staging / TUNING_CACHE_NAME)
        text = config_text(name, model.name, op_library, inputs, outputs, instances, max_batch_size, threads)
        parse_model_config(text)  # what is written must read back
        (staging / "config.pbtxt").write_text(text)
        os.rename(staging, final)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise OnnxSparseError(f"cannot write {final}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    sparse_ops = sum(1 for node in graph.graph.node if node.domain == DOMAIN)
    return TritonRepository(final, final / "config.pbtxt", final / str(version) / model.name,
                            final / LIBRARY_NAME, op_library, sparse_ops, environment)
