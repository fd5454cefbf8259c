"""What cuSPARSELt can do on this GPU, through PyTorch: torch._cslt_sparse_mm with its best
algorithm (torch._cslt_sparse_mm_search) vs dense cuBLAS (torch.mm), kernel time by CUDA events.

    python benchmarks/cslt_ref.py [--out FILE.json]

The same shapes as gpu_bench.py's GEMM table (fp16), Y[M, N] = X[M, K] @ W[N, K]^T; run in its own
process (torch and onnxruntime-gpu load different CUDA library copies).
"""

from __future__ import annotations

import argparse
import json

import torch

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (1024, 4096), (768, 3072)]
MS = [16, 64, 256, 1024, 4096, 16384]


def events_us(fn, reps):
    fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) * 1000 / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for k, n in SHAPES:
        w = torch.randn(n, k, device="cuda", dtype=torch.float16) * 0.05
        mask = torch.tensor([1, 1, 0, 0], device="cuda", dtype=torch.bool).repeat(n, k // 4)
        w = w * mask
        wc = torch._cslt_compress(w)
        for m in MS:
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            xt = x.t()
            reps = max(5, min(200, int(2e8 / (m * k * n / 1e3 + 1))))
            dense_us = events_us(lambda: torch.mm(x, w.t()), reps)
            try:
                found = torch._cslt_sparse_mm_search(wc, xt)
                alg = found[0] if isinstance(found, (tuple, list)) else int(found)
                sparse_us = events_us(lambda: torch._cslt_sparse_mm(wc, xt, alg_id=int(alg)), reps)
                default_us = events_us(lambda: torch._cslt_sparse_mm(wc, xt), reps)
            except Exception as e:  # noqa: BLE001
                print(f"K={k} N={n} M={m}: {str(e).splitlines()[0][:200]}", flush=True)
                continue
            rows.append({"m": m, "k": k, "n": n, "dense_us": round(dense_us, 2), "cslt_best_us": round(sparse_us, 2),
                         "cslt_alg0_us": round(default_us, 2), "alg": str(found), "speedup": round(dense_us / sparse_us, 3)})
            print(f"torch fp16 M={m:6d} K={k:5d} N={n:5d}  cuBLAS {dense_us:9.2f} us  cslt best {sparse_us:9.2f} us "
                  f"(alg {found}; alg 0 {default_us:9.2f} us)  x{dense_us / sparse_us:5.2f}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
