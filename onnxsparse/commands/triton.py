"""``onnxsparse triton COMPILED -o REPOSITORY``: a Triton Inference Server model repository (docs/serving.md)."""

from __future__ import annotations

import json

from ..errors import OnnxSparseError
from ..serving import InstanceGroup, write_triton_repository

NAME = "triton"
HELP = ("write a Triton Inference Server model repository (ONNX Runtime backend) for a compiled model: "
        "config.pbtxt, the model and its data file, the custom-op library")
ORDER = 45


def _gpus(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise OnnxSparseError(f"--gpus '{text}': give GPU ids separated by commas, e.g. 0,1") from None


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="COMPILED", help="compiled model (.onnx; its external data is copied too)")
    parser.add_argument("-o", "--output", required=True, metavar="REPOSITORY",
                        help="model repository folder (created; NAME inside it must not exist)")
    parser.add_argument("--name", help="model name in the repository (default: the file name up to its first dot)")
    parser.add_argument("--cpu-instances", type=int, default=None, metavar="N",
                        help="CPU instances, one ONNX Runtime session each (default 1 when no GPU instance is asked)")
    parser.add_argument("--gpu-instances", type=int, default=0, metavar="N", help="GPU instances per listed GPU")
    parser.add_argument("--gpus", default="", metavar="IDS", help="GPUs for the GPU instances, e.g. 0,1 (default: all)")
    parser.add_argument("--threads", type=int, metavar="T", help="intra-op threads per instance")
    parser.add_argument("--max-batch-size", type=int, default=0, metavar="B",
                        help="Triton's batching over the first dimension (0: none; the model's first dim must be dynamic)")
    parser.add_argument("--mount", metavar="PATH",
                        help="absolute path where the server sees REPOSITORY (e.g. /models); default: REPOSITORY here")
    parser.add_argument("--tuning-cache", metavar="FILE",
                        help="cuSPARSELt tuning cache (from `onnxsparse tune --provider cuda`) to ship with the model")
    parser.add_argument("--json", action="store_true", help="print what was written as JSON")


def run(args) -> int:
    instances = []
    cpu = args.cpu_instances if args.cpu_instances is not None else (0 if args.gpu_instances else 1)
    if cpu:
        instances.append(InstanceGroup("cpu", cpu))
    if args.gpu_instances:
        instances.append(InstanceGroup("gpu", args.gpu_instances, _gpus(args.gpus)))
    elif args.gpus:
        raise OnnxSparseError("--gpus needs --gpu-instances")
    result = write_triton_repository(args.model, args.output, args.name, instances=instances,
                                     max_batch_size=args.max_batch_size, threads=args.threads, mount=args.mount,
                                     tuning_cache=args.tuning_cache)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"wrote {result.model_dir} ({result.sparse_ops} onnxsparse ops in {result.model.name})")
    print(f"  op library for the server: {result.op_library_filename}")
    for key, value in result.environment.items():
        print(f"  set in the server's environment: {key}={value}")
    return 0
