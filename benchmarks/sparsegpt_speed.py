"""Time SparseGPT on one synthetic layer: ``python benchmarks/sparsegpt_speed.py [--rows 4096 --k 11008
--samples 256 --threads 1 --device cpu]``.

The layer's weight is standard normal, its calibration inputs X (``samples`` x K) a low-rank signal plus
noise, H = X^T X / samples in float64 (as the pruner's statistics give it). Prints, for the pruning
(``prune_matrix``) and for the layer-error diagnostic (``quadratic_forms``) separately, the process's CPU
time (every thread) and wall time; then, on torch, both as ``prune_layer`` runs them
(``sparsegpt_layer_torch``: H made from the captured sum, the layer error from the factor); then the
reconstruction error ||W X^T - W' X^T|| / ||W X^T|| computed from X itself, and whether every group of 4
keeps at most 2 weights. ``--layer-only`` times just the ``prune_layer`` path (and the peak RSS it adds).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's onnxsparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--k", type=int, default=11008)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu (torch) or numpy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layer-only", action="store_true", help="only the prune_layer path (torch)")
    args = parser.parse_args()
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    import resource

    from onnxsparse.prune.linalg import quadratic_forms, sparsegpt_layer_torch
    from onnxsparse.prune.methods import prune_matrix

    rng = np.random.default_rng(args.seed)
    weight = rng.standard_normal((args.rows, args.k), dtype=np.float32).astype(np.float64)
    x = (rng.standard_normal((args.samples, 32), dtype=np.float32) @ rng.standard_normal((32, args.k), dtype=np.float32)
         + 0.5 * rng.standard_normal((args.samples, args.k), dtype=np.float32))
    hessian = x.T.astype(np.float64) @ x.astype(np.float64) / args.samples

    def timed(label, fn):
        cpu, wall = time.process_time(), time.perf_counter()
        out = fn()
        print(f"{label}: {time.process_time() - cpu:.1f} s CPU, {time.perf_counter() - wall:.1f} s wall", flush=True)
        return out

    if not args.layer_only:
        pruned = timed("sparsegpt", lambda: prune_matrix("sparsegpt", weight, hessian, 2, 4, backend=args.device))
        energy, total = timed("layer error", lambda: quadratic_forms(pruned, weight, hessian, args.device))
    if args.device != "numpy":
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        sums = hessian * args.samples  # the captured sum X^T X, as Statistics holds it
        pruned, (energy, total) = timed("sparsegpt and layer error as prune_layer runs them", lambda: sparsegpt_layer_torch(
            weight.astype(np.float32), sums, args.samples, 2, 4, 128, 0.01, args.device))
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB "
              f"(before that step {before / 2**20:.2f} GiB)")
    xt = x.T.astype(np.float32)
    dense_out = weight.astype(np.float32) @ xt
    error = float(np.linalg.norm((pruned.astype(np.float32) @ xt) - dense_out) / np.linalg.norm(dense_out))
    groups = (pruned.reshape(args.rows, -1, 4) != 0).sum(-1)
    print(f"reconstruction error {error:.6f} (diagnostic {np.sqrt(max(energy, 0) / total):.6f}); "
          f"2:4 {bool((groups <= 2).all())}; threads {args.threads}, device {args.device}")


if __name__ == "__main__":
    main()
