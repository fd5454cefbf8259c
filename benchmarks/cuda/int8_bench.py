"""Per-GEMM benchmark of the int8 sparse op (QMatMulCompress, CUDA) on the GPU machine.

    python benchmarks/cuda/int8_bench.py [--ms 1 16 128 2048 8192] [--shapes 4096x4096 ...]
                                         [--search-min-m 2048] [--out FILE.json]

For each weight shape K x N and M: Y[M, N] from X[M, K] by
  - int8 sparse: QMatMulCompress in ONNX Runtime's CUDA EP, uint8 activations -> uint8 output
    (requantized, ORT's default static quantization; at M >= 32 scaled in cuSPARSELt's epilogue, and
    "exact": onnxsparse.cuda.int8_scaled_output=0, the int32 product and the library's epilogue
    pass), int8 -> int8 (symmetric activations: no shift pass) and int8 -> float output; weights 2:4
    int8, per-channel scales, int32 bias;
  - ORT fp16 dense: MatMul with an fp16 weight in the same CUDA EP;
  - torch._int_mm: dense int8 x int8 -> int32 (cuBLAS), the dense int8 reference outside ONNX
    Runtime; and torch._cslt_sparse_mm int8 -> int32 with its best algorithm (cuSPARSELt alone,
    no epilogue) to show what our epilogue and activation pass cost.
ONNX Runtime models hold LAYERS independent layers reading one input and run under CUDA-graph
replay (io-binding, one graph per M), so the time per layer is kernel time; torch times a CUDA
graph of LAYERS products the same way. torch runs in a child process (it loads its own copies of
the CUDA libraries). The int8 sessions search cuSPARSELt's configurations (tune=search) for
M >= --search-min-m (default: every M; about 0.1-0.4 s per shape and M for int8 on the H200), else take
its default algorithm, with the own kernel timed against it
(docs: DEVELOPERS.md, onnxsparse.cusparselt.tune).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

LAYERS = 8
MS = [1, 16, 128, 2048, 8192]
SHAPES = [(4096, 4096), (5120, 13824), (8192, 8192)]


def log(*args):
    print(*args, flush=True)


# --- torch (child process) ------------------------------------------------------------------------

def torch_child(shapes, ms) -> dict:
    import torch

    def graph_us(fn, reps=20):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        g.replay()
        torch.cuda.synchronize()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            g.replay()
        stop.record()
        torch.cuda.synchronize()
        return start.elapsed_time(stop) * 1000 / reps / LAYERS

    out = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
    try:
        out["cusparselt"] = str(torch.backends.cusparselt.version())
    except Exception:  # noqa: BLE001
        pass
    gen = torch.Generator(device="cuda").manual_seed(0)
    for k, n in shapes:
        # W [N, K] contiguous: _int_mm takes B = W.t() ([K, N] column-major), its fast cuBLAS layout.
        ws = [torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8, generator=gen) for _ in range(LAYERS)]
        mask = torch.tensor([1, 1, 0, 0], device="cuda", dtype=torch.bool).repeat(n, k // 4)
        sparse = []
        try:
            for w in ws:
                sparse.append(torch._cslt_compress((w * mask).contiguous()))
        except Exception as e:  # noqa: BLE001
            out[f"cslt_error_{k}x{n}"] = str(e).splitlines()[0][:200]
            sparse = []
        for m in ms:
            key = f"{k}x{n}x{m}"
            mm = max(m, 17)  # _int_mm wants M > 16
            x = torch.randint(-127, 128, (max(mm, 32), k), device="cuda", dtype=torch.int8, generator=gen)
            try:
                ys = [None] * LAYERS
                xm = x[:mm]

                def dense():
                    for i, w in enumerate(ws):
                        ys[i] = torch._int_mm(xm, w.t())
                out[f"int_mm_{key}"] = (graph_us(dense), mm)
            except Exception as e:  # noqa: BLE001
                out[f"int_mm_{key}"] = (None, str(e).splitlines()[0][:200])
            if sparse:
                mc = max(32, (m + 31) // 32 * 32)  # cuSPARSELt wants M a multiple of 16 (32 for int8 here)
                try:
                    xt = x[:mc].t()  # [K, M] view, as torch's semi-structured linear passes it
                    alg = torch._cslt_sparse_mm_search(sparse[0], xt, out_dtype=torch.int32)

                    def cslt():
                        for i, c in enumerate(sparse):
                            ys[i] = torch._cslt_sparse_mm(c, xt, out_dtype=torch.int32, alg_id=alg)
                    out[f"cslt_{key}"] = (graph_us(cslt), mc)
                except Exception as e:  # noqa: BLE001
                    out[f"cslt_{key}"] = (None, str(e).splitlines()[0][:200])
            del x
        del ws, sparse
        torch.cuda.empty_cache()
    return out


# --- ONNX Runtime ---------------------------------------------------------------------------------

def random_compressed(n: int, k: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """A random 2:4 int8 weight directly in SPEC's form (values [n, k/2], index [n, k/8]): two
    distinct ascending positions per group of 4, so no dense matrix is built (fast at 8192 x 8192)."""
    pairs = np.array([(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)], np.uint8)  # (index0, index1), p0 < 1 + index1
    nibbles = (pairs[:, 0] | (pairs[:, 1] << 2))[rng.integers(0, len(pairs), (n, k // 4))]
    if nibbles.shape[1] % 2:
        nibbles = np.concatenate([nibbles, np.zeros((n, 1), np.uint8)], axis=1)
    index = (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).astype(np.uint8)
    values = rng.integers(-127, 128, (n, k // 2), dtype=np.int8)
    return values, index


def fp16_dense_model(k: int, n: int, rng) -> bytes:
    """LAYERS dense fp16 MatMuls on one input X [M, K] (the weights need not be 2:4: dense time does
    not depend on them). Distinct weights, so that none stays in L2 between layers, up to 64 MiB; a
    larger weight cannot stay in L2 anyway and is shared (the model stays far below protobuf's 2 GiB)."""
    from onnx import TensorProto, helper, numpy_helper

    w = ((rng.random((k, n), dtype=np.float32) - 0.5) * 0.1).astype(np.float16)
    distinct = LAYERS if w.nbytes <= 64 << 20 else 1
    inits = [numpy_helper.from_array(np.roll(w, i * 7, axis=1), f"W{i}") for i in range(distinct)]
    nodes = [helper.make_node("MatMul", ["X", f"W{i % distinct}"], [f"Y{i}"]) for i in range(LAYERS)]
    graph = helper.make_graph(nodes, "fp16", [helper.make_tensor_value_info("X", TensorProto.FLOAT16, ["M", k])],
                              [helper.make_tensor_value_info(f"Y{i}", TensorProto.FLOAT16, ["M", n])
                               for i in range(LAYERS)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model.SerializeToString()


def int8_model(values: np.ndarray, index: np.ndarray, k: int, n: int, adtype, ydtype, rng) -> bytes:
    import onnx
    from onnx import helper, numpy_helper

    tdt = {np.uint8: onnx.TensorProto.UINT8, np.int8: onnx.TensorProto.INT8, np.float32: onnx.TensorProto.FLOAT}
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "as"),
             numpy_helper.from_array(np.array(128 if adtype == np.uint8 else 0, adtype), "azp")]
    if ydtype != np.float32:
        inits += [numpy_helper.from_array(np.array(0.5, np.float32), "ys"),
                  numpy_helper.from_array(np.array(128 if ydtype == np.uint8 else 0, ydtype), "yzp")]
    nodes = []
    # Distinct weights, so that a layer never finds its weight in L2 (50-60 MiB): all 8 when small,
    # else enough to exceed 128 MiB together (a smaller model builds and loads faster).
    distinct = LAYERS if (values.nbytes + index.nbytes) * LAYERS <= 256 << 20 else \
        max(2, -(-(128 << 20) // (values.nbytes + index.nbytes)))
    for i in range(distinct):
        inits += [numpy_helper.from_array(np.roll(values, i * 7, axis=0), f"V{i}"),
                  numpy_helper.from_array(np.roll(index, i * 7, axis=0), f"I{i}")]
    for i in range(LAYERS):
        inits += [numpy_helper.from_array((rng.random(n) * 0.001 + 0.0005).astype(np.float32), f"WS{i}"),
                  numpy_helper.from_array(rng.integers(-1000, 1000, n).astype(np.int32), f"B{i}")]
        ins = ["X", "as", "azp", f"V{i % distinct}", f"I{i % distinct}", f"WS{i}", f"B{i}"]
        if ydtype != np.float32:
            ins += ["ys", "yzp"]
        nodes.append(helper.make_node("QMatMulCompress", ins, [f"Y{i}"], domain="onnxsparse"))
    graph = helper.make_graph(nodes, "int8", [helper.make_tensor_value_info("X", tdt[adtype], ["M", k])],
                              [helper.make_tensor_value_info(f"Y{i}", tdt[ydtype], ["M", n]) for i in range(LAYERS)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("onnxsparse", 1)])
    model.ir_version = 10
    return model.SerializeToString()


def graph_us(sess, x_dtype, k: int, n: int, m: int, y_dtype, graph_id: int, min_time: float = 0.1) -> float:
    """Microseconds per layer under CUDA-graph replay (runs queued without a host sync)."""
    import onnxruntime as ort
    from graph_timing import replay_seconds

    rng = np.random.default_rng(m)
    if np.dtype(x_dtype).kind == "f":
        host = (rng.standard_normal((m, k)) * 0.5).astype(x_dtype)
    else:
        info = np.iinfo(x_dtype)
        host = rng.integers(info.min, int(info.max) + 1, (m, k)).astype(x_dtype)
    x = ort.OrtValue.ortvalue_from_numpy(host, "cuda", 0)
    ys = [ort.OrtValue.ortvalue_from_shape_and_type([m, n], y_dtype, "cuda", 0) for _ in range(LAYERS)]
    dt = replay_seconds(sess, x, ys, graph_id, min_time, max_reps=1000)
    return dt / LAYERS * 1e6


def ort_child(k: int, n: int, ms, search_min_m: int, cache: str) -> None:
    """One weight shape in ONNX Runtime: prints one JSON line per timing as soon as it is measured
    (fp16 first, then int8 without search, then the searched M), so that a parent that stops this
    process after its time limit keeps what was measured."""
    import onnxruntime as ort

    from onnxsparse.session import session_options

    provider = [("CUDAExecutionProvider", {"enable_cuda_graph": "1"})]
    rng = np.random.default_rng(0)
    t0 = time.time()

    def emit(name, m, us=None, error=None):
        rec = {"k": k, "n": n, "m": m, "name": name, "us": us, "error": error, "t": round(time.time() - t0, 1)}
        print(json.dumps(rec), flush=True)

    sess = ort.InferenceSession(fp16_dense_model(k, n, rng), session_options(), providers=provider)
    for gid, m in enumerate(ms, start=1):
        try:
            emit("fp16", m, graph_us(sess, np.float16, k, n, m, np.float16, gid))
        except Exception as e:  # noqa: BLE001
            emit("fp16", m, error=str(e).splitlines()[0][:200])
    del sess
    variants = (("u8->u8", np.uint8, np.uint8), ("u8->u8 exact", np.uint8, np.uint8), ("s8->s8", np.int8, np.int8),
                ("s8->f32", np.int8, np.float32))
    values, index = random_compressed(n, k, rng)
    blobs = {name: int8_model(values, index, k, n, adtype, ydtype, rng) for name, adtype, ydtype in variants}
    for searching in (False, True):
        group = [m for m in ms if (m >= search_min_m > 0) == searching]
        for name, adtype, ydtype in variants:
            if not group:
                continue
            opts = session_options(cusparselt_tune="search" if searching else "cache", cusparselt_cache=cache,
                                   trace=searching, log_verbose=True,
                                   cuda_int8_scaled_output=not name.endswith("exact"))
            sess = ort.InferenceSession(blobs[name], opts, providers=provider)
            for gid, m in enumerate(group, start=1):
                try:
                    emit(name, m, graph_us(sess, adtype, k, n, m, ydtype, gid))
                except Exception as e:  # noqa: BLE001
                    emit(name, m, error=str(e).splitlines()[0][:300])
            del sess


def ort_part(shapes, ms, search_min_m: int, cache: str, timeout: float) -> list[dict]:
    """Each shape in a child process (a cuSPARSELt configuration that hangs costs one shape, not the
    run), its measurements streamed back; the children's log lines are passed through."""
    rows = []
    for k, n in shapes:
        t0 = time.time()
        cmd = [sys.executable, __file__, "--ort-child", f"{k}x{n}", "--ms", *map(str, ms), "--search-min-m",
               str(search_min_m), "--cache", cache]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            out, err, note = r.stdout, r.stderr, "" if r.returncode == 0 else f" (exit {r.returncode})"
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            note = f" (stopped after {timeout:.0f} s)"
        got = {}
        for line in out.splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                got[(rec["name"], rec["m"])] = rec
                status = f"{rec['us']:.2f} us" if rec["us"] is not None else f"error: {rec['error']}"
                log(f"  K={k} N={n} M={rec['m']:5d} {rec['name']:8s} {status}  (t={rec['t']} s)")
        for line in err.splitlines():
            if "onnxsparse" in line and ("trace" in line or "int8:" in line or "error" in line.lower()):
                log("   ", line.strip()[-220:])
        for m in ms:
            row = {"k": k, "n": n, "m": m}
            for name in NAMES:
                rec = got.get((name, m))
                if rec and rec["us"] is not None:
                    row[f"{name}_us"] = round(rec["us"], 2)
            rows.append(row)
        log(f"  ORT K={k} N={n}: {time.time() - t0:.0f} s{note}")
    return rows


NAMES = ("fp16", "u8->u8", "u8->u8 exact", "s8->s8", "s8->f32")


def versions() -> dict:
    import onnxruntime as ort

    info = {"onnxruntime": ort.__version__, "python": platform.python_version()}
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        info["gpu"] = q.stdout.strip()
    except Exception:  # noqa: BLE001
        pass
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ms", type=int, nargs="+", default=MS)
    ap.add_argument("--shapes", nargs="+", default=[f"{k}x{n}" for k, n in SHAPES], help="KxN")
    ap.add_argument("--search-min-m", type=int, default=1,
                    help="search cuSPARSELt's configurations from this M (about 5 s per shape and M; 0: never)")
    ap.add_argument("--shape-timeout", type=float, default=40, help="seconds per weight shape in ONNX Runtime")
    ap.add_argument("--out", default="")
    ap.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ort-child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--cache", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
    if args.torch_child:
        print(json.dumps(torch_child(shapes, args.ms)))
        return
    if args.ort_child:
        k, n = (int(v) for v in args.ort_child.lower().split("x"))
        ort_child(k, n, args.ms, args.search_min_m, args.cache)
        return
    t_start = time.time()
    child = subprocess.run([sys.executable, __file__, "--torch-child", "--ms", *map(str, args.ms), "--shapes",
                            *args.shapes], capture_output=True, text=True, timeout=600)
    try:
        ref = json.loads(child.stdout.strip().splitlines()[-1])
    except Exception:  # noqa: BLE001
        ref = {}
        log("torch child failed:", child.stderr[-1500:])
    log(f"torch part: {time.time() - t_start:.0f} s")
    for key, v in sorted(ref.items()):
        if isinstance(v, list) and v[0] is None:
            log(f"  torch {key}: {v[1]}")
    cache = os.path.join(tempfile.mkdtemp(prefix="int8_bench_"), "cusparselt_tuning.txt")
    rows = ort_part(shapes, args.ms, args.search_min_m, cache, args.shape_timeout)
    meta = {**versions(), "torch": ref.get("torch"), "torch_device": ref.get("device"),
            "torch_cusparselt": ref.get("cusparselt"), "layers": LAYERS, "seconds": round(time.time() - t_start)}
    for r in rows:
        key = f"{r['k']}x{r['n']}x{r['m']}"
        for name in ("int_mm", "cslt"):
            v = ref.get(f"{name}_{key}")
            if v and v[0] is not None:
                r[f"{name}_us"] = round(v[0], 2)
                if v[1] != r["m"]:
                    r[f"{name}_m"] = v[1]
    log("")
    log(f"int8 2:4 QMatMulCompress vs dense, us per layer (kernel time, CUDA-graph replay, {LAYERS} layers per model)")
    log(f"device: {meta.get('gpu') or meta.get('torch_device')}; onnxruntime {meta['onnxruntime']}, torch {meta['torch']}, "
        f"cuSPARSELt (torch's) {meta['torch_cusparselt']}")
    log("| K x N | M | sparse u8->u8 | u8->u8 exact | s8->s8 | s8->f32 | cuSPARSELt alone | torch _int_mm | ORT fp16 "
        "| u8->u8 vs int8 dense | vs fp16 | s8->s8 vs int8 dense | vs fp16 | u8->u8 vs cuSPARSELt alone |")
    log("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for r in rows:
        best = min([r[f"{name}_us"] for name in NAMES[1:] if f"{name}_us" in r] or [nan])
        u8, s8 = r.get("u8->u8_us", nan), r.get("s8->s8_us", nan)
        mm, fp16 = r.get("int_mm_us", nan), r.get("fp16_us", nan)
        pad = f" (M={r['int_mm_m']})" if "int_mm_m" in r else ""
        log(f"| {r['k']}x{r['n']} | {r['m']} | {u8:.2f} | {r.get('u8->u8 exact_us', nan):.2f} | {s8:.2f} | "
            f"{r.get('s8->f32_us', nan):.2f} | {r.get('cslt_us', nan):.2f} | {mm:.2f}{pad} | {fp16:.2f} | "
            f"x{mm / u8:.2f} | x{fp16 / u8:.2f} | x{mm / s8:.2f} | x{fp16 / s8:.2f} | x{r.get('cslt_us', nan) / u8:.2f} |")
        r["best_sparse_us"] = best
    log(f"(total {time.time() - t_start:.0f} s)")
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
