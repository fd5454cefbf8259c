"""A boolean run-time option of the library, on against off, on the own kernel's small-M GEMMs, with
ONNX Runtime's dense MatMul in the same rounds.

    python3 benchmarks/cuda/option_ab.py --option cuda_persistent [--shapes 2560x10240,...] [--ms 1,4,16]

Per fp16 shape (K x N): gpu_bench's models (8 independent layers on one input, distinct weights) in
three sessions: dense, compiled with the option on, compiled with it off (cuSPARSELt's cache off, so
that M <= onnxsparse.cuda.small_m_max takes the own kernel). Kernel time per layer under CUDA-graph
replay (gpu_bench.time_graph), the three sessions timed in turn, --rounds times; medians. Prints one
line per (shape, M) and writes JSON lines to --out. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from gpu_bench import time_graph  # noqa: E402
from models.bench_nets import LAYERS, gemm_models  # noqa: E402
from onnxsparse.session import RUNTIME_OPTIONS, session_options  # noqa: E402

SHAPES = "2560x10240,4096x4096,4096x11008,11008x4096,5120x13824,8192x8192,1536x6144"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--option", default="cuda_persistent", choices=sorted(RUNTIME_OPTIONS))
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--ms", default="1,4,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    ms = [int(m) for m in args.ms.split(",")]
    cuda = [("CUDAExecutionProvider", {"enable_cuda_graph": "1"})]
    rng = np.random.default_rng(0)
    out = open(args.out, "a") if args.out else None
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        dense, sparse = gemm_models("float16", k, n, rng)
        sessions = {"dense": ort.InferenceSession(dense, session_options(), providers=cuda)}
        for on in (True, False):
            options = session_options(cusparselt_cache="off", **{args.option: on})
            sessions["on" if on else "off"] = ort.InferenceSession(sparse, options, providers=cuda)
        times = {(name, m): [] for name in sessions for m in ms}
        for _ in range(args.rounds):
            for name, sess in sessions.items():
                for gid, m in enumerate(ms, start=1):
                    times[(name, m)].append(time_graph(sess, "float16", k, n, m, gid) / LAYERS * 1e6)
        for m in ms:
            d, on, off = (statistics.median(times[(name, m)]) for name in ("dense", "on", "off"))
            rec = {"option": args.option, "k": k, "n": n, "m": m, "dense_us": round(d, 2), "on_us": round(on, 2),
                   "off_us": round(off, 2), "on_vs_dense": round(d / on, 3), "off_vs_dense": round(d / off, 3),
                   "on_vs_off": round(off / on, 3)}
            print(f"K={k:5d} N={n:5d} M={m:3d}  dense {d:7.2f} us  {args.option}=1 {on:7.2f} us (x{d / on:4.2f})  "
                  f"=0 {off:7.2f} us (x{d / off:4.2f})  on/off x{off / on:4.2f}", flush=True)
            if out:
                out.write(json.dumps(rec) + "\n")
        del sessions


if __name__ == "__main__":
    main()
