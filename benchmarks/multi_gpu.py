"""Serving on several GPUs of one host: a compiled BERT-large-sized model (models/bench_nets.py), one
session per GPU in one process, all GPUs busy at once (one thread each), against each GPU serving
alone. Prints per GPU the throughput alone, busy together, and their ratio (1.00: the GPUs do not
slow each other down; the goal is within 5%).

    python benchmarks/multi_gpu.py                      # GPUs 0 and 1, batch 8, seq 384, 10 s each
    python benchmarks/multi_gpu.py --devices 0,1,2,3 --batch 32 --graph --dense

Each session binds its input and output on its own GPU (no host copy in the timed loop). The
cuSPARSELt choices come from the tuning cache (run `onnxsparse tune --provider cuda` first, or pass
--search to search at the warm-up runs, which writes the cache). Needs onnxruntime-gpu, the library
built with CUDA, and as many GPUs as --devices names.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _session(path: str, device: int, graph: bool, search: bool):
    import onnxruntime as ort

    from onnxsparse.session import session_options

    opts = session_options(cusparselt_tune="search" if search else None)
    opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    provider = {"device_id": str(device)}
    if graph:
        provider["enable_cuda_graph"] = "1"
    return ort.InferenceSession(path, opts, providers=[("CUDAExecutionProvider", provider)])


class Server:
    """One session on one GPU, with its input and output bound there."""

    def __init__(self, path: str, device: int, shape: tuple[int, ...], graph: bool, search: bool, warmup: int):
        import onnxruntime as ort

        self.device = device
        self.session = _session(path, device, graph, search)
        x = (np.random.default_rng(device).standard_normal(shape) * 0.5).astype(np.float16)
        self.x = ort.OrtValue.ortvalue_from_numpy(x, "cuda", device)
        self.y = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float16, "cuda", device)
        self.binding = self.session.io_binding()
        self.binding.bind_ortvalue_input("X", self.x)
        self.binding.bind_ortvalue_output("Y", self.y)
        for _ in range(warmup):  # plans, packed weights, CUDA-graph capture
            self.session.run_with_iobinding(self.binding)

    def serve(self, seconds: float, start: threading.Barrier | None = None) -> float:
        """Runs per second over `seconds` of back-to-back runs."""
        if start is not None:
            start.wait()
        runs, t0 = 0, time.perf_counter()
        while True:
            self.session.run_with_iobinding(self.binding)  # synchronous: the output is ready
            runs += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                return runs / elapsed


def measure(path: str, devices: list[int], shape, seconds: float, graph: bool, search: bool, warmup: int) -> dict:
    servers = [Server(path, d, shape, graph, search, warmup) for d in devices]  # all created first: same memory state
    alone = {s.device: s.serve(seconds) for s in servers}
    together: dict[int, float] = {}
    barrier = threading.Barrier(len(servers))

    def run(server: Server) -> None:
        together[server.device] = server.serve(seconds, barrier)

    threads = [threading.Thread(target=run, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {d: (alone[d], together[d]) for d in devices}


def _compiled(model, folder: Path, dense: bool) -> str:
    from onnxsparse import io
    from onnxsparse.api import compile_model

    if not dense:
        result = compile_model(model)
        print(f"compiled: {len(result.rewritten)} of {len(result.layers)} layers sparse", flush=True)
        model = result.model
    path = folder / ("dense.onnx" if dense else "sparse.onnx")
    io.save_model(model, path, external_data=True)
    return str(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="0,1", help="GPU ids, comma-separated (default 0,1)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=384)
    parser.add_argument("--layers", type=int, default=24, help="encoder layers (24: BERT-large)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per phase and GPU")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--graph", action="store_true", help="CUDA-graph replay (enable_cuda_graph)")
    parser.add_argument("--dense", action="store_true", help="also time the dense model the same way")
    parser.add_argument("--search", action="store_true",
                        help="search cuSPARSELt configurations at the warm-up runs (writes the tuning cache)")
    args = parser.parse_args(argv)
    devices = [int(d) for d in args.devices.split(",") if d.strip()]
    if len(devices) < 2:
        parser.error("--devices needs at least two GPUs")

    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)", file=sys.stderr)
        return 2
    from models.bench_nets import bert_model

    shape = (args.batch, args.seq, 1024)
    print(f"BERT-large-sized encoder: {args.layers} layers, hidden 1024, FFN 4096, fp16, X {list(shape)}, "
          f"GPUs {devices}, {args.seconds:g} s per phase, CUDA graphs {'on' if args.graph else 'off'}", flush=True)
    model = bert_model(layers=args.layers, seq=args.seq)
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnxsparse-multi-gpu-") as folder:
        kinds = ["sparse"] + (["dense"] if args.dense else [])
        for kind in kinds:
            path = _compiled(model, Path(folder), dense=kind == "dense")
            result = measure(path, devices, shape, args.seconds, args.graph, args.search, args.warmup)
            for d in devices:
                alone, together = result[d]
                rows.append((kind, d, alone, together))
    print()
    print("| model | GPU | alone (runs/s) | all GPUs busy (runs/s) | busy / alone | sequences/s busy |")
    print("|---|---|---|---|---|---|")
    for kind, d, alone, together in rows:
        print(f"| {kind} | {d} | {alone:.2f} | {together:.2f} | {together / alone:.3f} | {together * args.batch:.1f} |")
    worst = min(together / alone for kind, _, alone, together in rows if kind == "sparse")
    print(f"\nsparse: worst per-GPU ratio busy/alone {worst:.3f} ({'within' if worst >= 0.95 else 'NOT within'} 5%)")
    if args.dense:
        for d in devices:
            s = next(r for r in rows if r[0] == "sparse" and r[1] == d)
            n = next(r for r in rows if r[0] == "dense" and r[1] == d)
            print(f"GPU {d}: sparse/dense throughput alone {s[2] / n[2]:.3f}x, busy {s[3] / n[3]:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
