"""Drives gemm_probe (kernel-level timings outside ONNX Runtime) on the GPU machine.

    python benchmarks/cuda/probe.py --exe PATH own  [--variants 3 4 5 6 7 8]
    python benchmarks/cuda/probe.py --exe PATH cslt [--ms 256 1024 ...]

Each (dtype, M, K, N) runs in its own child process. In `cslt` mode a child that dies (a
configuration that kills the CUDA context) is restarted after the configuration it was trying,
which is recorded as crashed. Writes a JSON of every line to --out.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (1024, 4096), (768, 3072)]


def find(pattern: str) -> str | None:
    hits = sorted(glob.glob(pattern, recursive=True))
    return hits[0] if hits else None


# A configuration that hangs (seen: cuSPARSELt 0.8.0, id 4 at M=6272 K=1152 N=128) costs this much, then
# the sweep goes on after it, like after a crash.
CSLT_CHILD_TIMEOUT_S = float(os.environ.get("PROBE_CHILD_TIMEOUT", "25"))


def child(exe, args, timeout):
    t0 = time.time()
    try:
        r = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout)
        out, rc = r.stdout, r.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), -999
    return out.splitlines(), rc, time.time() - t0


def run_own(exe, dtypes, ms, shapes, variants, rows):
    for dtype in dtypes:
        for k, n in shapes:
            for m in ms:
                lines, rc, _ = child(exe, ["own", dtype, m, k, n, *variants], 120)
                res = {}
                for ln in lines:
                    parts = ln.split()
                    if len(parts) >= 3 and (parts[0] == "dense" or parts[0].startswith("own-")):
                        res[parts[0]] = (float(parts[1]), float(parts[2]))
                dense = res.get("dense", (float("nan"), 0))[0]
                desc = " ".join(f"{name}={us:.2f}us(x{dense / us:.2f},err {err:.1e})" for name, (us, err) in res.items()
                                if name != "dense")
                print(f"own {dtype} M={m} K={k} N={n} dense={dense:.2f}us {desc} rc={rc}", flush=True)
                if rc != 0:
                    print("\n".join(lines[-5:]), flush=True)
                rows.append({"mode": "own", "dtype": dtype, "m": m, "k": k, "n": n, "rc": rc, "results": res})


def run_cslt(exe, dtypes, ms, shapes, rows, budget_s):
    t_start = time.time()
    for dtype in dtypes:
        for k, n in shapes:
            for m in ms:
                if time.time() - t_start > budget_s:
                    print("budget spent", flush=True)
                    return
                first, ids, crashed, default, dense, version = 0, {}, [], None, None, None
                while True:
                    lines, rc, _ = child(exe, ["cslt", dtype, m, k, n, first], CSLT_CHILD_TIMEOUT_S)
                    trying = None
                    for ln in lines:
                        p = ln.split()
                        if not p:
                            continue
                        if p[0] == "try":
                            trying = int(p[1])
                        elif p[0] == "dense":
                            dense = float(p[1])
                        elif p[0] == "version":
                            version = int(p[1])
                        elif p[0] == "default":
                            default = (float(p[2]), float(p[3]), p[4])
                        elif p[0] == "id" and len(p) >= 4 and p[2] not in ("rejected", "plan-rejected"):
                            ids[int(p[1])] = (float(p[2]), float(p[3]), p[4])
                        elif p[0] == "id":
                            ids[int(p[1])] = (None, None, p[2])
                    if rc == 0 or trying is None:
                        if rc != 0:
                            print(f"  child failed rc={rc}: {lines[-3:]}", flush=True)
                        break
                    crashed.append(trying)
                    first = trying + 1
                good = {i: v for i, v in ids.items() if v[0] is not None and v[1] is not None and v[1] < 2e-2}
                best = min(good.items(), key=lambda kv: kv[1][0]) if good else None
                line = (f"cslt {dtype} M={m} K={k} N={n} v{version} dense={dense} default={default and default[0]}"
                        f" best={best and (best[0], best[1][0], best[1][2])}"
                        f" x_default={dense / default[0] if default and dense else float('nan'):.2f}"
                        f" x_best={dense / best[1][0] if best and dense else float('nan'):.2f}"
                        f" crashed={crashed} wrong={[i for i, v in ids.items() if v[1] is not None and v[1] >= 2e-2]}")
                print(line, flush=True)
                rows.append({"mode": "cslt", "dtype": dtype, "m": m, "k": k, "n": n, "dense_us": dense,
                             "default": default, "ids": ids, "crashed": crashed, "version": version})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["own", "cslt", "search"])
    ap.add_argument("--exe", required=True)
    ap.add_argument("--dtypes", nargs="+", default=["f16"])
    ap.add_argument("--ms", nargs="+", type=int)
    ap.add_argument("--shapes", nargs="+", help="KxN")
    ap.add_argument("--variants", nargs="+", type=int, default=[4, 5, 6, 7, 8])
    ap.add_argument("--budget", type=float, default=240)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    os.environ.setdefault("PROBE_CUBLAS", find("/opt/torch/.venv/**/libcublas.so.1[0-9]") or "libcublas.so.13")
    os.environ.setdefault("PROBE_CUSPARSELT", find("/opt/torch/.venv/**/libcusparseLt.so.0") or "libcusparseLt.so.0")
    print("libraries:", os.environ["PROBE_CUBLAS"], os.environ["PROBE_CUSPARSELT"], flush=True)
    shapes = [tuple(map(int, s.split("x"))) for s in a.shapes] if a.shapes else SHAPES
    rows = []
    if a.mode == "own":
        run_own(a.exe, a.dtypes, a.ms or [1, 8, 16, 32], shapes, a.variants, rows)
    elif a.mode == "cslt":
        run_cslt(a.exe, a.dtypes, a.ms or [64, 256, 1024, 4096, 16384], shapes, rows, a.budget)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
