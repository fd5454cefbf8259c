"""GPU benchmark of the onnxsparse CUDA kernels against ONNX Runtime's dense CUDA EP (one command).

    python benchmarks/gpu_bench.py [--out benchmarks/results] [--quick]

(a) per GEMM: M x (K, N) for fp16 and bf16, MatMulCompress vs dense MatMul, both in ONNX Runtime's
    CUDA EP with the same session options. Each model holds LAYERS independent layers (distinct
    weights, so that no weight stays in L2) reading one input; it runs under CUDA-graph replay
    (enable_cuda_graph, io-binding, one graph per M via gpu_graph_id) without a host sync between
    runs, so the time per layer is kernel time, not per-run overhead.
(b) end to end, fp16: a BERT-large-like encoder (24 layers, hidden 1024, FFN 4096, seq 384) and a
    ResNet-50-like conv net, 2:4 magnitude-pruned, dense vs compiled by onnxsparse.api.compile_model.
With --convs B,...: every conv of the ResNet-50-like net, Conv2dCompress vs dense Conv, at those
batches (the rows `compile --target cuda` needs to run a Conv sparse).
Writes gpu_bench.json, gpu_bench.md, gpu_bench.png under --out, and onnxsparse/data/perf_cuda.json
(the table onnxsparse.targets reads).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from models.bench_nets import (  # noqa: E402
    LAYERS,
    NP,
    bert_model,
    conv_models,
    conv_specs,
    gemm_models,
    resnet_model,
)
from graph_timing import binding_median_seconds, kernel_times, replay_seconds  # noqa: E402
from onnxsparse.session import session_options  # noqa: E402

MS = [1, 8, 16, 64, 256, 1024, 4096, 16384]
SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (1024, 4096), (768, 3072)]
def log(*args):
    print(*args, flush=True)


def device_value(shape, dtype, data=None):
    """A CUDA OrtValue of `shape`; bf16 through ONNX's element type (numpy has no bfloat16 that
    ortvalue_from_numpy accepts), filled from the uint16 bits of `data`."""
    if dtype != "bfloat16":
        if data is None:
            return ort.OrtValue.ortvalue_from_shape_and_type(shape, NP[dtype], "cuda", 0)
        return ort.OrtValue.ortvalue_from_numpy(data.astype(NP[dtype]), "cuda", 0)
    v = ort.OrtValue.ortvalue_from_shape_and_type(shape, onnx.TensorProto.BFLOAT16, "cuda", 0)
    if data is not None:
        bits = np.ascontiguousarray(data.astype(NP[dtype]).view(np.uint16))
        try:
            v.update_inplace(bits)
        except Exception as e:  # noqa: BLE001  (timing does not depend on the values)
            log(f"  bf16 input left unfilled: {str(e).splitlines()[0][:120]}")
    return v


def time_graph(sess, dtype, k, n, m, graph_id, min_time=0.15, x_shape=None, y_shape=None):
    """Seconds per run under CUDA-graph replay (runs queued without host sync). X is [m, k] and
    each Y [m, n], or x_shape and y_shape where given (a conv's NCHW)."""
    x_shape, y_shape = x_shape or [m, k], y_shape or [m, n]
    rng = np.random.default_rng(int(np.prod(x_shape)) % 2**32)
    x = device_value(x_shape, dtype, rng.standard_normal(x_shape).astype(np.float32) * 0.5)
    ys = [device_value(y_shape, dtype) for _ in range(LAYERS)]
    return replay_seconds(sess, x, ys, graph_id, min_time, max_reps=2000)


def time_pair(dense: bytes, sparse: bytes, points, run, what: str):
    """[(point, dense us, sparse us) per layer] for the points both models ran: each model in one
    session with CUDA graphs, one graph per point; run(session, point, graph_id) gives seconds per
    run. A point that fails is logged and left out."""
    res = {}
    for name, blob in (("dense", dense), ("sparse", sparse)):
        sess = ort.InferenceSession(blob, session_options(), providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])
        for gid, point in enumerate(points, start=1):
            try:
                res[(name, point)] = run(sess, point, gid) / LAYERS * 1e6
            except Exception as e:  # noqa: BLE001
                log(f"  {name} {what} {point}: {str(e).splitlines()[0][:200]}")
        del sess
    return [(p, res[("dense", p)], res[("sparse", p)]) for p in points if ("dense", p) in res and ("sparse", p) in res]


def bench_gemms(dtypes, shapes, ms):
    records = []
    rng = np.random.default_rng(0)
    for dtype in dtypes:
        for k, n in shapes:
            t0 = time.time()
            dense, sparse = gemm_models(dtype, k, n, rng)
            timed = time_pair(dense, sparse, ms, lambda sess, m, gid: time_graph(sess, dtype, k, n, m, gid),
                              f"{dtype} K={k} N={n} M=")
            for m, d, s in timed:
                rec = {"op": "gemm", "dtype": dtype, "m": m, "k": k, "n": n, "sparse_us": round(s, 3), "dense_us": round(d, 3),
                       "speedup": round(d / s, 3), "sparse_tflops": round(2 * m * k * n / s / 1e6, 1)}
                records.append(rec)
                log(f"{dtype} M={m:6d} K={k:5d} N={n:5d}  dense {d:9.2f} us  sparse {s:9.2f} us  x{d / s:5.2f}")
            log(f"  ({time.time() - t0:.0f} s)")
    return records


def bench_convs(batches):
    """Per conv of resnet_model (fp16): Conv2dCompress vs ONNX Runtime's dense Conv at each batch,
    kernel time per layer under CUDA-graph replay. Records enter perf_cuda.json as op "conv" (m =
    batch * OH * OW, k = KH * KW * C, n = OC), the rows `compile --target cuda` needs for a Conv."""
    records = []
    rng = np.random.default_rng(3)
    for spec in conv_specs(resnet_model()):
        t0 = time.time()
        dense, sparse, ohw = conv_models(spec, rng)
        c, oc, hw = spec["c"], spec["oc"], spec["hw"]

        def run(sess, b, gid):
            return time_graph(sess, "float16", 0, 0, b, gid, x_shape=[b, c, hw, hw], y_shape=[b, oc, ohw, ohw])

        for b, d, s_ in time_pair(dense, sparse, batches, run, f"conv {spec} batch"):
            rec = {"op": "conv", "dtype": "float16", "m": b * ohw * ohw, "k": spec["kernel"] ** 2 * c, "n": oc,
                   "sparse_us": round(s_, 3), "dense_us": round(d, 3), "speedup": round(d / s_, 3), "batch": b, **spec}
            records.append(rec)
            log(f"conv {spec['kernel']}x{spec['kernel']} s{spec['stride']} C={c:4d} OC={oc:4d} HW={hw:3d} batch {b:3d}  "
                f"dense {d:9.2f} us  sparse {s_:9.2f} us  x{d / s_:5.2f}")
        log(f"  ({time.time() - t0:.0f} s)")
    return records


# ----------------------------------------------------------------------------- end to end
def compile_sparse(model: onnx.ModelProto, table: bool, batch: int | None = None) -> tuple[onnx.ModelProto, str, int]:
    """table=True: as `onnxsparse compile --target cuda --dim B=<batch>` (layers perf_cuda.json
    measured slower at that batch stay dense); False: every eligible layer rewritten."""
    from onnxsparse.api import compile_model
    from onnxsparse.targets import make_policy

    result = compile_model(model, policy=make_policy("cuda", dims={"B": batch} if batch else None) if table else None)
    how = f"target cuda, B={batch}" if table else "all eligible"
    return result.model, f"{how}: {len(result.rewritten)} of {len(result.layers)} layers rewritten", len(result.rewritten)


def _e2e_session(blob: bytes, x_shape, graph: bool):
    opts = session_options()
    provider = ("CUDAExecutionProvider", {"enable_cuda_graph": "1"} if graph else {})
    sess = ort.InferenceSession(blob, opts, providers=[provider])
    x = ort.OrtValue.ortvalue_from_numpy((np.random.default_rng(0).standard_normal(x_shape) * 0.5).astype(np.float16), "cuda", 0)
    b = sess.io_binding()
    b.bind_ortvalue_input("X", x)
    if graph:  # a graph replays into fixed output memory
        y = sess.get_outputs()[0]
        out_shape = [x_shape[0] if not isinstance(d, int) else d for d in y.shape]
        b.bind_ortvalue_output("Y", ort.OrtValue.ortvalue_from_shape_and_type(out_shape, np.float16, "cuda", 0))
    else:
        b.bind_output("Y", "cuda")
    for _ in range(3):
        sess.run_with_iobinding(b)
    return sess, b, x


def time_e2e(blob: bytes, x_shape, reps_time=1.0, graph=False):
    """Median ms per run (io-binding; with graph, CUDA-graph replay) and the output."""
    sess, b, _x = _e2e_session(blob, x_shape, graph)
    seconds = binding_median_seconds(sess, b, reps_time, most=200)
    out = b.copy_outputs_to_cpu()[0]
    del sess
    return seconds * 1e3, out


def kernel_breakdown(blob: bytes, x_shape, runs=5, top=12) -> dict:
    """GPU kernel time per run, by kernel (graph_timing.kernel_times)."""
    sess, b, _x = _e2e_session(blob, x_shape, False)
    try:
        return kernel_times(sess, b, runs, top, name_chars=60)
    finally:
        del sess


def bench_e2e(quick: bool, models=("bert_large_like", "resnet50_like"), batches=None, graph=False, breakdown=False):
    """graph: time every model also under CUDA-graph replay; breakdown: log kernel times per kernel."""
    rows = []
    specs = [("bert_large_like", bert_model, [(b, 384, 1024) for b in ([1, 8] if quick else [1, 8, 32])]),
             ("resnet50_like", resnet_model, [(b, 3, 224, 224) for b in ([1, 32] if quick else [1, 32, 128])])]
    for name, make, shapes in specs:
        if name not in models:
            continue
        if batches:
            shapes = [(b, *shapes[0][1:]) for b in batches]
        t0 = time.time()
        dense = make()
        sparse, how, all_count = compile_sparse(dense, False)
        log(f"{name}: {how}")
        all_sparse = (how, sparse.SerializeToString())
        per_batch = {}
        for shape in shapes:
            sparse, how, count = compile_sparse(dense, True, shape[0])
            log(f"{name}: {how}")
            # Nothing rewritten: the dense model; everything: the all-eligible model (timed once).
            per_batch[shape[0]] = (how, sparse.SerializeToString()) if 0 < count < all_count else None
        del sparse
        dense_blob = dense.SerializeToString()
        log(f"{name}: built in {time.time() - t0:.0f} s")
        del dense
        def timed(blob, shape, g, label):
            """(ms, output) of one model, with its kernel breakdown logged; None (logged) when it fails."""
            try:
                result = time_e2e(blob, shape, graph=g)
            except Exception as e:  # noqa: BLE001
                log(f"  {name} batch {shape[0]} {label}: {str(e).splitlines()[0][:300]}")
                return None
            if breakdown and not g:
                log(f"  {name} batch {shape[0]} {label} kernels: {json.dumps(kernel_breakdown(blob, shape))}")
            return result

        for shape in shapes:
            for g in ([False, True] if graph else [False]):
                dense_run = timed(dense_blob, shape, g, "dense")
                if dense_run is None:
                    continue
                d_ms, d_out = dense_run
                variants = [v for v in (per_batch[shape[0]], all_sparse) if v is not None]
                for how, blob in variants:
                    sparse_run = timed(blob, shape, g, f"[{how}]")
                    if sparse_run is None:
                        continue
                    s_ms, s_out = sparse_run
                    d64, s64 = d_out.astype(np.float64), s_out.astype(np.float64)
                    err = float(np.linalg.norm(s64 - d64) / max(np.linalg.norm(d64), 1e-30))
                    rows.append({"model": name, "batch": shape[0], "dense_ms": round(d_ms, 3), "sparse_ms": round(s_ms, 3),
                                 "speedup": round(d_ms / s_ms, 3), "rel_diff": err, "compile": how, "cuda_graph": g})
                    log(f"  {name} batch {shape[0]:4d} [{how}]{' graph' if g else ''}: dense {d_ms:8.2f} ms  "
                        f"sparse {s_ms:8.2f} ms  x{d_ms / s_ms:5.2f}  rel diff {err:.1e}")
    return rows


def versions():
    info = {"onnxruntime": ort.__version__, "python": platform.python_version()}
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        info["gpu"] = q.stdout.strip()
        v = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
        info["cuda_driver_api"] = next((ln.split("CUDA Version:")[1].split("|")[0].strip() for ln in v.splitlines() if "CUDA Version" in ln), "")
    except Exception:  # noqa: BLE001
        pass
    try:
        import importlib.metadata as md

        for pkg in ("nvidia-cusparselt-cu13", "nvidia-cusparselt-cu12", "nvidia-cublas", "nvidia-cuda-runtime", "torch"):
            try:
                info[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                pass
    except Exception:  # noqa: BLE001
        pass
    info["ONNXSPARSE_CUSPARSELT_LIBRARY"] = os.environ.get("ONNXSPARSE_CUSPARSELT_LIBRARY", "")
    return info


def write_outputs(out: Path, gemms, e2e, meta, convs=()):
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps({"meta": meta, "gemm": gemms, "conv": list(convs), "e2e": e2e}, indent=1))
    table = {"target": "cuda", "meta": meta,
             "records": [{k: r[k] for k in ("op", "dtype", "m", "k", "n", "sparse_us", "dense_us")} for r in [*gemms, *convs]]}
    (REPO / "onnxsparse" / "data").mkdir(exist_ok=True)
    (REPO / "onnxsparse" / "data" / "perf_cuda.json").write_text(json.dumps(table, indent=1))
    lines = [f"# GPU benchmark: onnxsparse CUDA vs ONNX Runtime dense CUDA EP", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in meta.items() if v), "",
             "## Per GEMM (kernel time per layer, CUDA-graph replay, 8 layers per model)", "",
             "| dtype | M | K | N | dense us | sparse us | speedup | sparse TFLOP/s |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dtype']} | {r['m']} | {r['k']} | {r['n']} | {r['dense_us']:.2f} | {r['sparse_us']:.2f} | {r['speedup']:.2f} | {r['sparse_tflops']} |" for r in gemms]
    if convs:
        lines += ["", "## Per conv of the ResNet-50-like net (fp16, kernel time per layer, CUDA-graph replay, 8 layers per model)", "",
                  "| kernel | stride | C | OC | H=W | batch | M | dense us | sparse us | speedup |", "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['kernel']}x{r['kernel']} | {r['stride']} | {r['c']} | {r['oc']} | {r['hw']} | {r['batch']} | {r['m']} | "
                  f"{r['dense_us']:.2f} | {r['sparse_us']:.2f} | {r['speedup']:.2f} |" for r in convs]
    lines += ["", "## End to end (fp16, median ms per run, io-binding; graph: CUDA-graph replay)", "", "| model | batch | compiled | run | dense ms | compiled ms | speedup | rel diff |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r.get('compile', '')} | {'graph' if r.get('cuda_graph') else 'plain'} | {r['dense_ms']:.2f} | {r['sparse_ms']:.2f} | {r['speedup']:.2f} | {r['rel_diff']:.1e} |" for r in e2e]
    (out / "gpu_bench.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(13, 5))
        for ax, dtype in zip(axes, ("float16", "bfloat16")):
            for k, n in SHAPES:
                rs = sorted((r for r in gemms if r["dtype"] == dtype and r["k"] == k and r["n"] == n), key=lambda r: r["m"])
                if rs:
                    ax.plot([r["m"] for r in rs], [r["speedup"] for r in rs], marker="o", label=f"K={k} N={n}")
            ax.axhline(1.0, color="gray", lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("M")
            ax.set_ylabel("dense time / sparse time")
            ax.set_title(f"2:4 sparse vs dense, {dtype} ({meta.get('gpu', 'GPU')})")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "gpu_bench.png", dpi=110)
    except Exception as e:  # noqa: BLE001
        log(f"no plot: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--quick", action="store_true", help="fewer shapes (a smoke run)")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--skip-gemm", action="store_true")
    ap.add_argument("--dtypes", default="float16,bfloat16")
    ap.add_argument("--shapes", default="", help="per-GEMM K x N list, e.g. 1024x1024,4096x1024 (default: the issue's)")
    ap.add_argument("--ms", default="", help="per-GEMM M list, e.g. 384,3072 (default: the issue's)")
    ap.add_argument("--convs", default="", help="also time every conv of the ResNet-50-like net at these batches, e.g. 1,32,128")
    ap.add_argument("--models", default="bert_large_like,resnet50_like", help="end-to-end models to run")
    ap.add_argument("--batches", default="", help="end-to-end batch sizes (default: the issue's per model)")
    ap.add_argument("--cuda-graph", action="store_true", help="end to end under CUDA-graph replay as well")
    ap.add_argument("--breakdown", action="store_true", help="log GPU kernel time per kernel (needs torch)")
    args = ap.parse_args()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        sys.exit("gpu_bench: onnxruntime has no CUDAExecutionProvider")
    meta = versions()
    log(json.dumps(meta))
    # Rows of an earlier run (the same --out) that this run does not redo stay.
    try:
        earlier = json.loads((Path(args.out) / "gpu_bench.json").read_text())
    except (OSError, ValueError):
        earlier = {}
    earlier_e2e, gemms, convs = earlier.get("e2e", []), earlier.get("gemm", []), earlier.get("conv", [])
    shapes = SHAPES[:1] if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
    ms = [1, 16, 256, 4096] if args.quick else MS
    if args.ms:
        ms = [int(m) for m in args.ms.split(",")]
    if not args.skip_gemm:
        new = bench_gemms(args.dtypes.split(","), shapes, ms)
        key = lambda r: (r["dtype"], r["m"], r["k"], r["n"])  # noqa: E731
        done = {key(r) for r in new}
        order = {shape: i for i, shape in enumerate(SHAPES)}  # the shapes first, then the extra ones
        gemms = sorted([r for r in gemms if key(r) not in done] + new,
                       key=lambda r: (r["dtype"] != "float16", order.get((r["k"], r["n"]), len(SHAPES)), r["k"], r["n"], r["m"]))
        write_outputs(Path(args.out), gemms, earlier_e2e, meta, convs)
    if args.convs:
        new = bench_convs([int(b) for b in args.convs.split(",")])
        key = lambda r: (r["dtype"], r["batch"], r["c"], r["oc"], r["kernel"], r["stride"], r["hw"])  # noqa: E731
        done = {key(r) for r in new}
        convs = [r for r in convs if key(r) not in done] + new
        write_outputs(Path(args.out), gemms, earlier_e2e, meta, convs)
    e2e = earlier_e2e
    if not args.skip_e2e:
        models = args.models.split(",")
        batches = [int(b) for b in args.batches.split(",")] if args.batches else None
        e2e = bench_e2e(args.quick, models, batches, args.cuda_graph, args.breakdown)
        done = {(r["model"], r["batch"], r.get("cuda_graph", False)) for r in e2e}
        e2e = [r for r in earlier_e2e if (r["model"], r["batch"], r.get("cuda_graph", False)) not in done] + e2e
    write_outputs(Path(args.out), gemms, e2e, meta, convs)
    log(f"wrote {args.out}/gpu_bench.{{json,md,png}} and onnxsparse/data/perf_cuda.json")


if __name__ == "__main__":
    main()
