"""``onnxsparse bench ORIGINAL COMPILED``: dense vs compiled model, timed side by side."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import onnxruntime as ort

from .. import __version__
from ..bench import bench
from ._model_pair import add_model_pair_arguments, input_options, open_pair

NAME = "bench"
HELP = "time a compiled model against its original: same inputs, threads and provider, interleaved runs"
ORDER = 35


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_pair_arguments(parser)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads for both sessions (default 0: all cores)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each model (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")


def run(args: argparse.Namespace) -> int:
    options = input_options(args)
    open_pair(args)
    result = bench(args.original, args.compiled, args.inputs, args.batch_size, args.threads, args.runs, args.warmup,
                   args.provider, **options)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "onnxsparse": __version__,
    }
    if args.json:
        print(json.dumps({**result.to_dict(), "machine": machine}, indent=2))
        return 0
    threads = "all cores" if result.threads == 0 else f"{result.threads} thread{'s' if result.threads > 1 else ''}"
    print(f"{result.provider}, {threads}, batch {result.batch_size}, median of {result.runs} interleaved runs")
    print(f"  dense    {result.dense_ms:9.3f} ms  (IQR {result.dense_spread_ms:.3f})")
    print(f"  compiled {result.sparse_ms:9.3f} ms  (IQR {result.sparse_spread_ms:.3f})")
    print(f"  speedup  {result.speedup:9.2f}x  (per-run IQR {result.speedup_low:.2f}x-{result.speedup_high:.2f}x)")
    path = result.execution_provider + (f", CPU kernels {result.cpu_isa}" if result.cpu_isa else "")
    print(f"  kernel path: {path}")
    print(f"  onnxruntime {machine['onnxruntime']}, {machine['cores']} cores")
    for warning in result.warnings:
        print(f"onnxsparse bench: warning: {warning}", file=sys.stderr)
    return 0
