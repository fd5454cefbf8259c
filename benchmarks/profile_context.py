"""Why per-layer ratios mislead on CPU: ONNX Runtime's profile of a conv net, dense against compiled.

    python benchmarks/profile_context.py [--model resnet18|rec] [--layers all|tuned] [--runs 20] [--threads 1]

ONNX Runtime's CPU optimizer rewrites a dense net's ``Conv -> (Add) -> Relu`` chains into fused
``com.microsoft.nchwc.Conv`` nodes that keep the blocked NCHWc layout from one conv to the next,
with a ``ReorderInput`` at the chain's start and a ``ReorderOutput`` at its end. A custom op in the
chain reads and writes plain NCHW, so each sparse conv puts a reorder on either side of itself and
runs its bias and activation as separate nodes. This script profiles both models
(``enable_profiling``), sums the node events per op type over ``--runs`` runs, and prints the table
(per run) and the counts that the per-layer timings of ``onnxsparse tune`` do not see.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from onnxsparse.api import compile_model  # noqa: E402
from onnxsparse.tune.problems import bind_inputs  # noqa: E402
from onnxsparse.session import timing_options as make_options  # noqa: E402
from onnxsparse.tune.tuner import model_feeds  # noqa: E402


def profile_runs(model, feeds, threads, runs):
    """The per-op profile of ``runs`` runs (the first, which does first-call work, is left out)."""
    with tempfile.TemporaryDirectory() as tmp:
        options = make_options(threads, profile_prefix=os.path.join(tmp, "profile"))
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, feeds)
        path = session.end_profiling()
        events = json.loads(Path(path).read_text())
    return summarize(events)


def summarize(events) -> dict:
    per_op: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    run_events = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    runs = max(1, len(run_events))
    # Drop the first run (first-call work: packing, workspaces).
    first_end = run_events[0]["ts"] + run_events[0]["dur"] if run_events else 0
    kept = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
            and e["ts"] > first_end]
    for event in kept:
        op = event.get("args", {}).get("op_name", "?")
        per_op[op][0] += 1
        per_op[op][1] += event["dur"]
    counted = max(1, runs - 1)
    return {
        "runs": counted,
        "run_ms": sum(e["dur"] for e in run_events[1:]) / counted / 1e3,
        "ops": {op: {"nodes": round(n / counted, 1), "ms": us / counted / 1e3} for op, (n, us) in sorted(per_op.items())},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="resnet18, or a path to an ONNX model")
    parser.add_argument("--input-shape", default=None, help="NAME:[dims] for a model path")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--only", nargs="+", metavar="PATTERN",
                        help="make only the eligible layers matching these node-name patterns sparse (default: all)")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()
    if args.model == "resnet18":
        from models.resnet18 import build_resnet18

        model, dims, shapes = build_resnet18(), {"batch": 1}, {}
    else:
        from onnxsparse.tune.problems import parse_input_shapes

        model, dims = onnx.load(args.model), {}
        shapes = parse_input_shapes([args.input_shape]) if args.input_shape else {}
    feeds = model_feeds(bind_inputs(model, dims, shapes))
    policy = None
    if args.only:
        from fnmatch import fnmatchcase

        def policy(record):
            return None if any(fnmatchcase(record.node, p) for p in args.only) else "not in --only"
    compiled = compile_model(model, policy=policy)
    result = {"dense": profile_runs(model, feeds, args.threads, args.runs),
              "compiled": profile_runs(compiled.model, feeds, args.threads, args.runs),
              "sparse_layers": len(compiled.rewritten), "threads": args.threads}
    ops = sorted(set(result["dense"]["ops"]) | set(result["compiled"]["ops"]))
    print(f"per run, {args.threads} thread(s), {result['sparse_layers']} layers sparse in the compiled model")
    print(f"| op | dense nodes | dense ms | compiled nodes | compiled ms |")
    print("|---|---|---|---|---|")
    for op in ops:
        d = result["dense"]["ops"].get(op, {"nodes": 0, "ms": 0.0})
        c = result["compiled"]["ops"].get(op, {"nodes": 0, "ms": 0.0})
        print(f"| {op} | {d['nodes']:g} | {d['ms']:.2f} | {c['nodes']:g} | {c['ms']:.2f} |")
    print(f"| whole run | | {result['dense']['run_ms']:.2f} | | {result['compiled']['run_ms']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
