"""``onnxsparse tune MODEL``: time each distinct eligible layer sparse against dense on this machine.

The results go to the per-machine tuning cache, which ``onnxsparse compile --target cpu|cuda|host``
reads: a layer runs sparse only where this machine measured it faster. Then the whole model is
timed dense against compiled, and layers are dropped until the compiled model is not slower.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import io
from ..errors import OnnxSparseError
from ..targets import parse_dims

NAME = "tune"
HELP = "time each distinct 2:4 layer sparse against dense on this machine (for compile --target)"
ORDER = 25


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="the ONNX model to tune for (never modified)")
    parser.add_argument("--provider", choices=("cpu", "cuda", "host"), default="host",
                        help="where the model will run (default: host, this machine's: cuda when a GPU answers)")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads the model will run with (default 0: ONNX Runtime's choice, all cores)")
    parser.add_argument("--dim", action="append", default=[], metavar="NAME=VALUE",
                        help="the value of a symbolic input dimension the model will run with; repeatable")
    parser.add_argument("--input-shapes", nargs="+", default=[], metavar="NAME:[D1,D2,...]",
                        help="the full shape of an input, e.g. x:[1,3,48,320]")
    parser.add_argument("--cache", help="the tuning cache file (default: $XDG_CACHE_HOME/onnxsparse/tune.json "
                                        "or ~/.cache/onnxsparse/tune.json)")
    parser.add_argument("--budget", type=float, default=1.0, metavar="SECONDS",
                        help="timing time per distinct layer problem (default 1.0)")
    parser.add_argument("--whole-budget", type=float, default=8.0, metavar="SECONDS",
                        help="timing time per whole-model comparison (default 8.0)")
    parser.add_argument("--no-whole-model", action="store_true",
                        help="skip timing the whole model dense against compiled")
    parser.add_argument("--retune", action="store_true", help="time again the problems the cache already holds")
    parser.add_argument("--pad-channels", action="store_true", help="also time the Convs that `compile --pad-channels` "
                        "rewrites on zero-padded input channels (2-D, group 1, C not a multiple of 4)")
    parser.add_argument("--cpu-isa", choices=("avx512", "avx2", "portable"),
                        help="force the library's CPU kernel path (the sessions' onnxsparse.cpu_isa)")
    parser.add_argument("--no-spinning", action="store_true",
                        help="time with ONNX Runtime's intra-op threads sleeping between ops instead of spinning "
                        "(session.intra_op.allow_spinning=0), as the model will run on cores shared with other jobs")
    parser.add_argument("--list", action="store_true", help="list the machines the cache holds measurements for")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from ..hardware import host_provider
    from ..tune import TuneCache, tune_model
    from ..tune.problems import parse_input_shapes
    from ..tune.tuner import Progress

    cache = TuneCache.load(args.cache)
    if args.list:
        return _list(cache, args.json)
    if not args.model:
        raise OnnxSparseError("give the model to tune (or --list)")
    if args.threads < 0:
        raise OnnxSparseError("--threads must be 0 (ONNX Runtime's choice) or more")
    if args.budget <= 0 or args.whole_budget <= 0:
        raise OnnxSparseError("--budget and --whole-budget must be positive")
    try:
        dims = parse_dims(args.dim)
        shapes = parse_input_shapes(args.input_shapes)
    except ValueError as e:
        raise OnnxSparseError(str(e)) from None
    provider = host_provider() if args.provider == "host" else args.provider
    if provider == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise OnnxSparseError("--provider cuda: this ONNX Runtime has no CUDAExecutionProvider")
    model = io.load_model(Path(args.model))
    result = tune_model(model, provider, args.threads, dims, shapes, cache, budget_s=args.budget,
                        whole_model=not args.no_whole_model, whole_budget_s=args.whole_budget, retune=args.retune,
                        cpu_isa=args.cpu_isa, progress=Progress(args.quiet), name=Path(args.model).name,
                        spinning=not args.no_spinning, pad_channels=args.pad_channels)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print_summary(result)
    return 0


def print_summary(result) -> None:
    print(f"machine: {result.machine.short}")
    print(f"  key {result.machine.id}")
    timed = [p for p in result.problems if p.record is not None and not p.cached]
    cached = [p for p in result.problems if p.cached]
    print(f"{len(result.problems)} distinct layer problems: {len(timed)} timed, {len(cached)} from the cache"
          + (f", {sum(1 for p in result.problems if p.error)} not timed" if any(p.error for p in result.problems) else ""))
    for p in result.problems:
        layers = f"{len(p.layers)} layer{'s' if len(p.layers) != 1 else ''}"
        if p.record is None:
            print(f"  {p.key} ({layers}): not timed: {p.error}")
            continue
        r = p.record
        print(f"  {r['ratio']:.2f}x [{r['ratio_low']:.2f}-{r['ratio_high']:.2f}] {r['dense_us']:9.1f} -> "
              f"{r['sparse_us']:9.1f} us  {p.key} ({layers}{', cached' if p.cached else ''})")
    verdict = result.whole_model
    if verdict:
        if "dense_ms" in verdict:
            print(f"whole model: {verdict['ratio_before']:.3f}x with {verdict['sparse_layers']} layers sparse "
                  f"({verdict['dense_ms']:.2f} ms dense, {verdict['compiled_ms_before']:.2f} ms compiled)")
        if verdict.get("dense_layers"):
            print(f"  kept dense by the whole-model check: {len(verdict['dense_layers'])} layers "
                  f"(then {verdict['ratio']:.3f}x)")
        if verdict.get("note"):
            print(f"  {verdict['note']}")
    sparse = sum(1 for c in result.choices.values() if c.sparse)
    print(f"compile --target {result.machine.provider} will rewrite {sparse} of {len(result.choices)} eligible layers"
          + ("" if result.machine.spinning else f" given --hardware '{result.machine.id}' (timings with "
                                                "threads not spinning have a key of their own)"))
    print(f"cache: {result.cache_path} ({result.seconds:.0f} s)")


def _list(cache, as_json: bool) -> int:
    machines = cache.data["machines"]
    if as_json:
        print(json.dumps({key_id: {"layers": len(e["layers"]), "models": len(e["models"]), "key": e["key"]}
                          for key_id, e in machines.items()}, indent=2))
        return 0
    if not machines:
        print(f"{cache.path}: no measurements")
        return 0
    print(f"{cache.path}:")
    for key_id, entry in machines.items():
        print(f"  {key_id}: {len(entry['layers'])} layer problems, {len(entry['models'])} models")
    return 0
