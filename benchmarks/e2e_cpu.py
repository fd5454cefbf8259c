"""End to end on this CPU: ``onnxsparse tune`` then ``compile --target cpu``, dense against compiled.

    python benchmarks/e2e_cpu.py [--models rec resnet18 bert128 bert1 bert4] [--threads 1 2]
                                 [--cpu-isa avx2] [--work DIR] [--cache FILE] [--rounds 5] [--budget 6]
                                 [--out benchmarks/results/e2e_cpu.json]

For each model and thread count: tune the model at the shapes it runs (the same as the commands
``onnxsparse tune MODEL --provider cpu --threads T --dim ...`` and ``onnxsparse compile MODEL
--target cpu --threads T --dim ...``), compile it with this machine's measurements, then time the
dense and the compiled model: ``--rounds`` rounds, each with fresh sessions of the same options and
``--budget`` seconds of interleaved runs (ABBA). The ratio is dense / compiled of the medians of
each round; the table gives the median over rounds and their range. Wall time throughout; at one
thread also the calling thread's CPU time (ONNX Runtime computes on it), which the other jobs of a
shared machine do not inflate.

Models (written into ``--work`` once):
- ``rec``: PP-OCRv6 text recognition (``PP-OCRv6_rec_small.onnx`` from ``rapidocr==3.10.0``, as
  ``benchmarks/ppocr`` gets it), every eligible layer magnitude-pruned to 2:4 (``onnxsparse prune
  --method magnitude``; the head stays dense), one 1x3x48x320 line image;
- ``resnet18``: ``models/resnet18.py`` at batch 1;
- ``bert128`` / ``bert1`` / ``bert4``: ``models/bert_base.py`` (12 layers, hidden 768, FFN 3072,
  fp32) at batch 1 and 128, 1 or 4 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from onnxsparse.api import compile_model  # noqa: E402
from onnxsparse.hardware import host_key  # noqa: E402
from onnxsparse.tune import MeasuredPolicy, TuneCache, tune_model  # noqa: E402
from onnxsparse.tune.problems import bind_inputs  # noqa: E402
from onnxsparse.session import timing_options as make_options
from onnxsparse.tune.timing import open_pair, time_pair  # noqa: E402
from onnxsparse.tune.tuner import Progress, model_feeds  # noqa: E402

MODELS = {
    # name: (file in --work, dims, input shapes)
    "rec": ("rec.pruned.onnx", {}, {"x": [1, 3, 48, 320]}),
    "resnet18": ("resnet18.onnx", {"batch": 1}, {}),
    "bert128": ("bert_base.onnx", {"batch": 1, "seq": 128}, {}),
    "bert1": ("bert_base.onnx", {"batch": 1, "seq": 1}, {}),
    "bert4": ("bert_base.onnx", {"batch": 1, "seq": 4}, {}),
}


def log(message: str) -> None:
    print(f"[e2e] {message}", file=sys.stderr, flush=True)


def make_model(name: str, work: Path) -> Path:
    path = work / MODELS[name][0]
    if path.is_file():
        return path
    work.mkdir(parents=True, exist_ok=True)
    if name == "resnet18":
        from models.resnet18 import build_resnet18

        onnx.save(build_resnet18(), path)
    elif name.startswith("bert"):
        from models.bert_base import build_bert_base

        onnx.save(build_bert_base(), path)
    else:
        sys.path.insert(0, str(REPO / "benchmarks" / "ppocr"))
        from run import find_model  # installs rapidocr==3.10.0 (--no-deps) when missing

        source = find_model()
        subprocess.run([sys.executable, "-m", "onnxsparse", "prune", str(source), "-o", str(path),
                        "--method", "magnitude"], check=True, cwd=REPO)
    log(f"wrote {path}")
    return path


def bench(dense: onnx.ModelProto, compiled: onnx.ModelProto, feeds, threads: int, cpu_isa: str | None,
          rounds: int, budget: float, spinning: bool = True) -> dict:
    runtime = {"cpu_isa": cpu_isa} if cpu_isa else {}
    dense_blob, compiled_blob = dense.SerializeToString(), compiled.SerializeToString()
    out: dict = {}
    clocks = ["wall"] + (["cpu"] if threads == 1 else [])
    per_round: dict[str, list] = {clock: [] for clock in clocks}
    for index in range(rounds):
        for clock in clocks:
            d, s = open_pair(dense_blob, compiled_blob, "cpu", lambda: make_options(threads, runtime, spinning=spinning))
            t = time_pair(d, s, feeds, budget_s=budget / len(clocks), min_pairs=5, target_spread=0.0, max_pairs=10_000,
                          clock=clock)
            per_round[clock].append(t)
            del d, s
        log(f"  round {index + 1}/{rounds}: " + ", ".join(
            f"{clock} {per_round[clock][-1].ratio:.3f}x ({per_round[clock][-1].dense_us / 1e3:.2f} / "
            f"{per_round[clock][-1].sparse_us / 1e3:.2f} ms, {per_round[clock][-1].pairs} pairs)" for clock in clocks))
    for clock, timings in per_round.items():
        ratios = [t.ratio for t in timings]
        out[clock] = {
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "dense_ms": statistics.median(t.dense_us for t in timings) / 1e3,
            "compiled_ms": statistics.median(t.sparse_us for t in timings) / 1e3,
            "pairs": sum(t.pairs for t in timings), "rounds": [round(r, 4) for r in ratios],
        }
    return out


def machine() -> dict:
    key = host_key("cpu", 0)
    return {"cpu": key.cpu, "family": key.family, "model": key.model, "stepping": key.stepping,
            "library_isa": key.isa, "cores": os.cpu_count(), "onnxruntime": ort.__version__,
            "library": key.library, "python": platform.python_version(), "load_before": os.getloadavg()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--cpu-isa", choices=("avx512", "avx2", "portable"))
    parser.add_argument("--work", default=str(REPO / "build" / "e2e"), help="where the models are written")
    parser.add_argument("--cache", default=None, help="tuning cache (default: tune's own)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=6.0, help="seconds of timing per round")
    parser.add_argument("--tune-budget", type=float, default=1.0)
    parser.add_argument("--no-spinning", action="store_true",
                        help="intra-op threads sleep between ops (session.intra_op.allow_spinning=0), tune and bench")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "e2e_cpu.json"))
    args = parser.parse_args()

    work = Path(args.work)
    cache = TuneCache.load(args.cache)
    before = machine()
    rows = []
    for name in args.models:
        path = make_model(name, work)
        model = onnx.load(path)
        file, dims, shapes = MODELS[name]
        feeds = model_feeds(bind_inputs(model, dims, shapes))
        for threads in args.threads:
            log(f"{name}, {threads} thread(s){', cpu_isa=' + args.cpu_isa if args.cpu_isa else ''}: tune")
            start = time.perf_counter()
            tuned = tune_model(model, "cpu", threads, dims, shapes, cache, budget_s=args.tune_budget,
                               cpu_isa=args.cpu_isa, progress=Progress(), name=file,
                               spinning=not args.no_spinning)
            tune_s = time.perf_counter() - start
            policy = MeasuredPolicy("cpu", tuned.machine, cache, dims, shapes)
            result = compile_model(model, policy=policy)
            log(f"  {len(result.rewritten)} of {len(result.layers)} layers sparse; timing dense against compiled")
            timing = bench(model, result.model, feeds, threads, args.cpu_isa, args.rounds, args.budget,
                           spinning=not args.no_spinning)
            dim_args = " ".join(f"--dim {k}={v}" for k, v in dims.items())
            shape_args = " ".join(f"--input-shapes {k}:[{','.join(map(str, v))}]" for k, v in shapes.items())
            isa_arg = f" --cpu-isa {args.cpu_isa}" if args.cpu_isa else ""
            spin_arg = " --no-spinning" if args.no_spinning else ""
            rows.append({
                "model": name, "threads": threads, "cpu_isa": args.cpu_isa or "auto", "machine_key": tuned.machine.id,
                "spinning": not args.no_spinning,
                "layers_sparse": len(result.rewritten), "layers": len(result.layers),
                "problems": len(tuned.problems), "tune_s": round(tune_s, 1),
                "whole_model": {k: v for k, v in (tuned.whole_model or {}).items() if k != "rounds"},
                "commands": [f"onnxsparse tune {file} --provider cpu --threads {threads} {dim_args} {shape_args}{isa_arg}{spin_arg}",
                             f"onnxsparse compile {file} --target cpu --threads {threads} {dim_args} {shape_args}{isa_arg}"],
                **timing,
            })
            log(f"  {name} t{threads}: wall {timing['wall']['ratio']:.3f}x "
                f"[{timing['wall']['ratio_min']:.3f}-{timing['wall']['ratio_max']:.3f}]"
                + (f", cpu {timing['cpu']['ratio']:.3f}x" if "cpu" in timing else ""))
    record = {"machine": before, "load_after": os.getloadavg(), "rows": rows,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {"runs": []}
    previous.setdefault("runs", []).append(record)
    out.write_text(json.dumps(previous, indent=1) + "\n")
    print(markdown(record))
    return 0


def markdown(record: dict) -> str:
    lines = ["| model | threads | ISA | layers sparse | tune s | dense ms | compiled ms | ratio (wall) | range | ratio (thread CPU) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        cpu = f"{r['cpu']['ratio']:.3f}x" if "cpu" in r else ""
        threads = f"{r['threads']}" + ("" if r.get("spinning", True) else " (no spinning)")
        lines.append(f"| {r['model']} | {threads} | {r['cpu_isa']} | {r['layers_sparse']} of {r['layers']} | "
                     f"{r['tune_s']:.0f} | {r['wall']['dense_ms']:.2f} | {r['wall']['compiled_ms']:.2f} | "
                     f"**{r['wall']['ratio']:.3f}x** | {r['wall']['ratio_min']:.3f}-{r['wall']['ratio_max']:.3f} | {cpu} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
