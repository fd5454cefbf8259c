"""Two builds of the custom-op library on the same int8 2:4 GEMMs, side by side in one process.

Each build is registered on its own session (ONNX Runtime loads each library file once, for the
sessions that name it), both sessions run the same model (``QMatMulCompress`` layers with the
weights of ``int8_cpu_bench``) on the same inputs, interleaved ABBA, one thread, timed by the thread's
CPU time; the outputs must be equal. Each round makes fresh sessions; prints per shape and M the
median time per layer of each build and the median over rounds of the per-pair ratio B/A (below 1:
B is faster), with the rounds' range.

    python benchmarks/int8_ab.py OLD.so NEW.so --isa avx2 --weight-limit 64 --shapes 4096x4096 768x3072 --m 1 4 16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
import int8_cpu_bench  # noqa: E402  (the benchmarks folder is not a package)

from onnxsparse.session import RUNTIME_OPTIONS  # noqa: E402


def session(model: bytes, library: str, isa: str) -> ort.InferenceSession:
    """One thread, like int8_cpu_bench's sessions, with this library file (not the package's own)."""
    options = int8_cpu_bench.options(1)
    options.log_severity_level = 3
    options.add_session_config_entry(RUNTIME_OPTIONS["cpu_isa"], isa)
    options.register_custom_ops_library(library)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def compare(libraries: list[str], k: int, n: int, ms: list[int], args, rng) -> list[dict]:
    layers = max(1, round(args.layers * 4096 * 4096 / (k * n)))
    model = int8_cpu_bench.gemm_models(k, n, layers, rng, args.weight_limit)["sparse"]
    feeds = {m: {"A": rng.integers(0, 256, (m, k)).astype(np.uint8)} for m in ms}
    # Per round fresh sessions, made in alternating order: where a session's weights land in memory
    # moves a layer's time by several percent (two sessions of one build differed by 0.95-1.07x in
    # one process here), so one pair of sessions cannot tell builds apart by less than that.
    ratios: dict[int, list[float]] = {m: [] for m in ms}
    medians: dict[int, list[list[float]]] = {m: [[], []] for m in ms}
    for round_ in range(args.rounds):
        order = (0, 1) if round_ % 2 == 0 else (1, 0)
        made = {i: session(model, libraries[i], args.isa) for i in order}
        sessions = [made[0], made[1]]
        for m in ms:
            first, second = (s.run(None, feeds[m]) for s in sessions)
            if not all(np.array_equal(x, y) for x, y in zip(first, second)):
                raise SystemExit(f"int8_ab: the two builds give different outputs at {k}x{n} M={m}")
            times: list[list[float]] = [[], []]
            for repeat in range(args.repeats):
                for i in ((0, 1) if repeat % 2 == 0 else (1, 0)):  # ABBA: neither build always runs first
                    t0 = time.thread_time()
                    sessions[i].run(None, feeds[m])
                    times[i].append((time.thread_time() - t0) / layers)
            a, b = (np.array(t) for t in times)
            ratios[m].append(float(np.median(b / a)))
            medians[m][0].append(float(np.median(a)))
            medians[m][1].append(float(np.median(b)))
        del made, sessions
    rows = []
    for m in ms:
        row = {"k": k, "n": n, "m": m, "a_us": float(np.median(medians[m][0]) * 1e6),
               "b_us": float(np.median(medians[m][1]) * 1e6), "b_over_a": float(np.median(ratios[m])),
               "rounds": [round(r, 4) for r in ratios[m]]}
        print(f"{k}x{n} M={m:<3d} A {row['a_us']:9.1f} us  B {row['b_us']:9.1f} us  B/A {row['b_over_a']:.3f}"
              f"  (rounds {min(ratios[m]):.3f}-{max(ratios[m]):.3f})", flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="library A (e.g. the build before a change)")
    parser.add_argument("b", help="library B")
    parser.add_argument("--isa", default="avx2", choices=["portable", "avx2", "avx512"])
    parser.add_argument("--weight-limit", type=int, default=127,
                        help="weights in [-limit, limit]: 127 full range, 64 as reduce_range writes them")
    parser.add_argument("--shapes", nargs="+", type=int8_cpu_bench.shape_arg, default=[(4096, 4096)], metavar="KxN")
    parser.add_argument("--m", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--layers", type=float, default=2, help="4096x4096 layers' worth of weights per model")
    parser.add_argument("--repeats", type=int, default=25, help="timed runs of each build per round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="fresh pairs of sessions, made in alternating order (default 3); B/A is their median")
    args = parser.parse_args(argv)
    for library in (args.a, args.b):
        if not Path(library).is_file():
            parser.error(f"no library file {library}")
    if not 1 <= args.weight_limit <= 127:
        parser.error("--weight-limit must be within 1..127")
    if args.rounds < 1 or args.repeats < 1 or not args.layers > 0:
        parser.error("--rounds and --repeats must be at least 1, --layers above 0")
    rng = np.random.default_rng(0)
    for k, n in args.shapes:
        compare([args.a, args.b], k, n, args.m, args, rng)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
