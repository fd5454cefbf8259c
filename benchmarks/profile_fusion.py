"""Dense against compiled against compiled with the activation fused: ONNX Runtime's profile of a
PP-LCNet-style classifier (or any model), per op type.

    python benchmarks/profile_fusion.py [--model pplcnet|pplcnet-mul|PATH] [--threads 1] [--runs 20] [--json OUT]

ONNX Runtime fuses a dense ``Conv -> HardSwish`` into one NCHWc conv and keeps the blocked layout
between convs; a custom op in the chain reads and writes NCHW, so ``ReorderInput``/``ReorderOutput``
nodes appear around it and the activation runs as a node of its own. "unfused" is the compiler
without its ``FuseActivation`` pass (the state before it existed), "fused" is ``compile_model``.
The table gives, per run, the nodes and milliseconds of each op type (ONNX Runtime's
``enable_profiling``; the first run is left out), the time in reorders and in activation nodes,
and the whole run (the profile's ``model_run``). The three sessions run in turn, one run each per
round, so that load from other jobs falls on all three alike; every figure is the median over the
rounds (the first round, which does first-call work, is left out).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import onnx  # noqa: E402

from onnxsparse.api import compile_model  # noqa: E402
from onnxsparse.compiler import (AnnotateShapes, CheckSparsity, FoldCompress, ModelGraph, Pipeline,  # noqa: E402
                                 RewriteSparseOps)
from onnxsparse.tune.problems import bind_inputs  # noqa: E402
from onnxsparse.tune.tuner import model_feeds  # noqa: E402
from onnxsparse.session import timing_options as make_options  # noqa: E402

REORDERS = ("ReorderInput", "ReorderOutput")
ACTIVATIONS = ("Relu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid", "LeakyRelu", "Gelu", "Mul")


def compile_unfused(model: onnx.ModelProto) -> onnx.ModelProto:
    """What ``compile_model`` wrote before the FuseActivation pass: the activation stays a node."""
    graph = ModelGraph(model)
    Pipeline([CheckSparsity(), RewriteSparseOps(), FoldCompress(), AnnotateShapes()])(graph)
    return graph.to_model()


def profile_interleaved(models: dict, feeds: dict, threads: int, runs: int) -> dict:
    """Per model: the median per run of each op type's node time and count, and of the whole run."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for name, model in models.items():
            options = make_options(threads, profile_prefix=os.path.join(tmp, name))
            sessions[name] = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):
            for session in sessions.values():
                session.run(None, feeds)
        result = {}
        for name, session in sessions.items():
            events = json.loads(Path(session.end_profiling()).read_text())
            result[name] = _per_run(events)
    return result


def _per_run(events: list) -> dict:
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[1:]  # the first run does first-call work
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_run = []
    for run in runs:
        ops: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
        for e in nodes:
            if run["ts"] <= e["ts"] <= run["ts"] + run["dur"]:
                op = e.get("args", {}).get("op_name", "?")
                ops[op][0] += 1
                ops[op][1] += e["dur"] / 1e3
        per_run.append(ops)
    names = sorted({op for ops in per_run for op in ops})
    return {
        "runs": len(runs),
        "run_ms": statistics.median(r["dur"] / 1e3 for r in runs),
        "ops": {op: {"nodes": statistics.median(ops[op][0] if op in ops else 0 for ops in per_run),
                     "ms": statistics.median(ops[op][1] if op in ops else 0.0 for ops in per_run)} for op in names},
        "reorders_ms": statistics.median(sum(ops[op][1] for op in ops if op in REORDERS) for ops in per_run),
        "activations_ms": statistics.median(sum(ops[op][1] for op in ops if op in ACTIVATIONS) for ops in per_run),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pplcnet", help="pplcnet, pplcnet-mul, or a path (input [1,3,224,224])")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.model in ("pplcnet", "pplcnet-mul"):
        from models.pplcnet import build_pplcnet

        model = build_pplcnet(hardswish="mul" if args.model.endswith("mul") else "op")
    else:
        model = onnx.load(args.model)
    feeds = model_feeds(bind_inputs(model, {"batch": 1}, {}))
    models = {"dense": model, "unfused": compile_unfused(model), "fused": compile_model(model).model}
    result = profile_interleaved(models, feeds, args.threads, args.runs)
    result["threads"] = args.threads
    ops = sorted({op for name in models for op in result[name]["ops"]})
    print(f"median per run, {args.threads} thread(s), {args.runs} interleaved rounds (first left out)")
    print("| op | " + " | ".join(f"{name} nodes | {name} ms" for name in models) + " |")
    print("|---|" + "---|---|" * len(models))
    for op in ops:
        cells = []
        for name in models:
            entry = result[name]["ops"].get(op, {"nodes": 0, "ms": 0.0})
            cells += [f"{entry['nodes']:g}", f"{entry['ms']:.2f}"]
        print(f"| {op} | " + " | ".join(cells) + " |")

    for label, key in (("reorders", "reorders_ms"), ("activation nodes", "activations_ms")):
        print(f"| {label} | | " + " | | ".join(f"{result[name][key]:.2f}" for name in models) + " |")
    print("| whole run | | " + " | | ".join(f"{result[name]['run_ms']:.2f}" for name in models) + " |")
    dense = result["dense"]["run_ms"]
    print("dense / compiled: " + ", ".join(f"{name} {dense / result[name]['run_ms']:.2f}x" for name in models if name != "dense"))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
