"""Where a model's GPU time goes: CUDA kernel time per kernel, per run, of ONNX Runtime CUDA sessions.

    python3 benchmarks/cuda/kernel_profile.py --layer 4096x1024:12288:bias [--layer ...]
    python3 benchmarks/cuda/kernel_profile.py --model A.onnx --model B.onnx --feed input_ids=32x384:int:30522

--layer KxN:M[:bias]: one fp16 linear layer (MatMul of X [M, K] by a 2:4-pruned [K, N] weight, then
  the bias Add when asked, as `onnxsparse tune` times it), dense against compiled by onnxsparse
  (``compile_model``), in the same process and session options (``onnxsparse.session.session_options``,
  so the cuSPARSELt cache is the user's, seeded from the shipped table where absent).
--model PATH (repeatable) with --feed NAME=DxDx..:float|half|int[:HIGH]: the models on that input.

For each: the wall time per run with io-binding (outputs on the GPU; what ``tune`` measures), the time
per run under CUDA-graph replay where the session allows it, and the kernels of ``--runs`` runs from
CUDA's activity trace (torch.profiler records every kernel of the process, ONNX Runtime's too), the
largest first, as time per run. Needs onnxruntime-gpu and torch (for the trace); prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from graph_timing import binding_median_seconds, binding_replay_seconds, kernel_times  # noqa: E402
from onnxsparse.format import prune_weight_magnitude  # noqa: E402
from onnxsparse.session import session_options  # noqa: E402

TYPES = {"float": np.float32, "half": np.float16, "int": np.int64}


def layer_models(spec: str) -> tuple[bytes, bytes, dict]:
    """(dense, compiled, feeds) of one --layer spec."""
    from onnxsparse.api import compile_model

    parts = spec.split(":")
    k, n = (int(v) for v in parts[0].split("x"))
    m = int(parts[1])
    bias = len(parts) > 2 and parts[2] == "bias"
    rng = np.random.default_rng(0)
    w = prune_weight_magnitude(rng.standard_normal((k, n)).astype(np.float16), "kn")
    inits = [numpy_helper.from_array(w, "w")]
    nodes = [helper.make_node("MatMul", ["X", "w"], ["Y" if not bias else "p"])]
    if bias:
        inits.append(numpy_helper.from_array((rng.standard_normal(n) * 0.1).astype(np.float16), "b"))
        nodes.append(helper.make_node("Add", ["p", "b"], ["Y"]))
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("X", TensorProto.FLOAT16, [m, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT16, [m, n])], inits)
    dense = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    dense.ir_version = 10
    compiled = compile_model(dense).model
    feeds = {"X": (rng.standard_normal((m, k)) * 0.5).astype(np.float16)}
    return dense.SerializeToString(), compiled.SerializeToString(), feeds


def parse_feed(text: str, rng) -> tuple[str, np.ndarray]:
    name, rest = text.split("=", 1)
    fields = rest.split(":")
    shape = [int(v) for v in fields[0].split("x")]
    dtype = TYPES[fields[1] if len(fields) > 1 else "float"]
    if dtype is np.int64:
        high = int(fields[2]) if len(fields) > 2 else 1000
        return name, rng.integers(0, high, size=shape, dtype=np.int64)
    return name, (rng.standard_normal(shape) * 0.5).astype(dtype)


def session(model, graph: bool) -> ort.InferenceSession:
    provider = ("CUDAExecutionProvider", {"enable_cuda_graph": "1"} if graph else {})
    return ort.InferenceSession(model, session_options(), providers=[provider])


def bound(sess: ort.InferenceSession, feeds: dict, outputs: list | None = None):
    """io-binding of the feeds on the GPU; outputs allocated by ONNX Runtime, or (a CUDA graph replays
    into fixed memory) the given arrays' shapes and types on the GPU."""
    b = sess.io_binding()
    for name, array in feeds.items():
        b.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
    for index, meta in enumerate(sess.get_outputs()):
        if outputs is None:
            b.bind_output(meta.name, "cuda")
        else:
            value = outputs[index]
            b.bind_ortvalue_output(meta.name, ort.OrtValue.ortvalue_from_shape_and_type(value.shape, value.dtype, "cuda", 0))
    return b


def wall_us(sess, b, seconds: float) -> float:
    for _ in range(3):
        sess.run_with_iobinding(b)
    return binding_median_seconds(sess, b, seconds) * 1e6


def replay_us(model, feeds: dict, outputs: list, seconds: float) -> float | str:
    """Time per run under CUDA-graph replay (benchmarks/graph_timing.py's loop)."""
    try:
        sess = session(model, True)
        return binding_replay_seconds(sess, bound(sess, feeds, outputs), 1, seconds, 5000) * 1e6
    except Exception as exc:  # noqa: BLE001 - reported
        return f"no CUDA graph: {str(exc).splitlines()[0][:200]}"


def profile_model(label: str, model, feeds: dict, args) -> dict:
    row = {"model": label}
    outputs = None
    try:
        sess = session(model, False)
        outputs = sess.run(None, feeds)
        b = bound(sess, feeds)
        row["wall_us"] = round(wall_us(sess, b, args.seconds), 1)
        row.update(kernel_times(sess, b, args.runs, args.top))
        del sess
    except Exception as exc:  # noqa: BLE001 - one failing model is reported, the rest still run
        row["error"] = str(exc).splitlines()[0][:300]
    replay = replay_us(model, feeds, outputs, args.seconds) if args.graph and outputs is not None else "not run"
    row["replay_us"] = round(replay, 1) if isinstance(replay, float) else replay
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", action="append", default=[], help="KxN:M[:bias], fp16, dense vs compiled")
    ap.add_argument("--model", action="append", default=[], help="an ONNX file")
    ap.add_argument("--feed", action="append", default=[], help="NAME=DxD:float|half|int[:HIGH] for --model")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--top", type=int, default=14)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--no-graph", dest="graph", action="store_false")
    args = ap.parse_args(argv)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print("kernel_profile: onnxruntime has no CUDAExecutionProvider", file=sys.stderr)
        return 2
    rng = np.random.default_rng(1)
    for spec in args.layer:
        dense, compiled, feeds = layer_models(spec)
        for label, model in (("dense", dense), ("compiled", compiled)):
            profile_model(f"{spec} {label}", model, feeds, args)
    if args.model:
        feeds = dict(parse_feed(text, rng) for text in args.feed)
        for path in args.model:
            profile_model(path, path, feeds, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
