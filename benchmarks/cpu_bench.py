"""CPU benchmark: onnxsparse's 2:4 kernels against ONNX Runtime's dense MLAS kernels.

    python benchmarks/cpu_bench.py --threads 1 2 --out benchmarks/results/cpu.json

Every row times a sparse model and its dense twin in the same process, with the same inputs and
the same ``intra_op_num_threads``, runs interleaved (sparse, dense, sparse, ...) so that load from
other processes hits both alike, and reports medians. A model holds several independent layers
(each with its own weight) so that the weights of one run exceed the L3 cache, as a real model's
do, and session overhead is small next to the work; times are per layer.

Rows: MatMul at M in {1, 4, 16, 64, 256, 1024} x (K, N) in {(4096, 4096), (768, 3072),
(3072, 768), (1024, 4096)}; the distinct conv layers of ResNet-50 at batch 1 and 8; the sample
models (models/) end to end, compiled with ``onnxsparse.api.compile_model``.

Writes the JSON (``--out``), a markdown table next to it (``.md``), and, with ``--perf``, the
per-shape table the compiler reads to keep layers dense where sparse is slower
(``onnxsparse/data/perf_cpu.json``, format in ``onnxsparse/targets.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
_LOCAL_BUILD = REPO / "build" / "cpu" / "libonnxsparse_ops.so"
if "ONNXSPARSE_LIBRARY" not in os.environ and _LOCAL_BUILD.is_file():
    os.environ["ONNXSPARSE_LIBRARY"] = str(_LOCAL_BUILD)

import onnxruntime as ort  # noqa: E402

import onnxsparse  # noqa: E402
from onnxsparse import format as fmt  # noqa: E402

MATMUL_M = [1, 4, 16, 64, 256, 1024]
MATMUL_KN = [(4096, 4096), (768, 3072), (3072, 768), (1024, 4096)]

# ResNet-50's distinct convolutions (torchvision v1.5: stride on the 3x3), eligible for 2:4
# (C/group a multiple of 4; the 7x7 stem has C=3 and stays dense):
# (name, C, OC, H=W of the input, kernel, stride, pad)
RESNET50_CONVS = [
    ("l1.1x1.64-64", 64, 64, 56, 1, 1, 0),
    ("l1.3x3.64-64", 64, 64, 56, 3, 1, 1),
    ("l1.1x1.64-256", 64, 256, 56, 1, 1, 0),
    ("l1.1x1.256-64", 256, 64, 56, 1, 1, 0),
    ("l2.1x1.256-128", 256, 128, 56, 1, 1, 0),
    ("l2.3x3.128-128.s2", 128, 128, 56, 3, 2, 1),
    ("l2.3x3.128-128", 128, 128, 28, 3, 1, 1),
    ("l2.1x1.128-512", 128, 512, 28, 1, 1, 0),
    ("l2.down.256-512.s2", 256, 512, 56, 1, 2, 0),
    ("l2.1x1.512-128", 512, 128, 28, 1, 1, 0),
    ("l3.1x1.512-256", 512, 256, 28, 1, 1, 0),
    ("l3.3x3.256-256.s2", 256, 256, 28, 3, 2, 1),
    ("l3.3x3.256-256", 256, 256, 14, 3, 1, 1),
    ("l3.1x1.256-1024", 256, 1024, 14, 1, 1, 0),
    ("l3.down.512-1024.s2", 512, 1024, 28, 1, 2, 0),
    ("l3.1x1.1024-256", 1024, 256, 14, 1, 1, 0),
    ("l4.1x1.1024-512", 1024, 512, 14, 1, 1, 0),
    ("l4.3x3.512-512.s2", 512, 512, 14, 3, 2, 1),
    ("l4.3x3.512-512", 512, 512, 7, 3, 1, 1),
    ("l4.1x1.512-2048", 512, 2048, 7, 1, 1, 0),
    ("l4.down.1024-2048.s2", 1024, 2048, 14, 1, 2, 0),
    ("l4.1x1.2048-512", 2048, 512, 7, 1, 1, 0),
]
# The sample convnet's eligible layers at 224x224 (small channel counts; models/convnet.py):
# (name, C, OC, H=W, kernel, stride, pad, group, dilation)
CONVNET_CONVS = [
    ("convnet.down.16-32.s2", 16, 32, 224, 3, 2, 1, 1, 1),
    ("convnet.pointwise.32-32", 32, 32, 112, 1, 1, 0, 1, 1),
    ("convnet.grouped.32-32.g2", 32, 32, 112, 3, 1, 1, 2, 1),
    ("convnet.same.32-64.s2", 32, 64, 112, 3, 2, 1, 1, 1),
    ("convnet.dilated.64-64.d2", 64, 64, 56, 3, 1, 2, 1, 2),
]
CONV_BATCHES = [1, 8]

WEIGHT_BYTES_PER_MODEL = 128 << 20  # dense weight bytes per timed model: well past the 32 MiB L3
MAX_LAYERS = 8
OPSET, IR_VERSION = 17, 10
# The timer of each run: wall time, or with --cpu-time (one thread: ONNX Runtime then runs the
# kernels on the calling thread) this thread's CPU time, which leaves out the time slices that other
# processes take on a shared machine (their cache and memory traffic still shows).
CLOCK = time.perf_counter
ELEM = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16}


# ------------------------------------------------------------------------------------------
# models


def _model(nodes, inputs, outputs, initializers, custom: bool) -> bytes:
    graph = helper.make_graph(nodes, "bench", inputs, outputs, initializer=initializers)
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid("onnxsparse", 1)] if custom else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION).SerializeToString()


def layer_count(dense_weight_bytes: int, cap: int = MAX_LAYERS) -> int:
    return max(1, min(cap, math.ceil(WEIGHT_BYTES_PER_MODEL / dense_weight_bytes)))


def matmul_models(k: int, n: int, layers: int, dtype: str, rng) -> tuple[bytes, bytes]:
    """L independent MatMul layers on one input A [M, K] (M symbolic, so one model serves every M)."""
    elem = ELEM[dtype]
    np_dtype = np.dtype(dtype)
    dense_nodes, sparse_nodes, dense_init, sparse_init, outputs = [], [], [], [], []
    for i in range(layers):
        w = fmt.prune_weight_magnitude(rng.standard_normal((k, n)).astype(np.float32), "kn").astype(np_dtype)
        values, index = fmt.compress_weight(w, "kn")
        dense_init.append(numpy_helper.from_array(w, f"W{i}"))
        sparse_init += [numpy_helper.from_array(values, f"V{i}"), numpy_helper.from_array(index, f"I{i}")]
        dense_nodes.append(helper.make_node("MatMul", ["A", f"W{i}"], [f"Y{i}"]))
        sparse_nodes.append(helper.make_node("MatMulCompress", ["A", f"V{i}", f"I{i}"], [f"Y{i}"], domain="onnxsparse"))
        outputs.append(helper.make_tensor_value_info(f"Y{i}", elem, ["M", n]))
    inputs = [helper.make_tensor_value_info("A", elem, ["M", k])]
    return (_model(sparse_nodes, inputs, outputs, sparse_init, True),
            _model(dense_nodes, inputs, outputs, dense_init, False))


def conv_models(batch, c, oc, hw, kernel, stride, pad, layers, dtype, rng, group=1, dilation=1):
    np_dtype = np.dtype(dtype)
    elem = ELEM[dtype]
    x = rng.standard_normal((batch, c, hw, hw)).astype(np_dtype)
    attrs = dict(kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4, group=group,
                 dilations=[dilation, dilation])
    dense_nodes, sparse_nodes, dense_init, sparse_init, outputs = [], [], [], [], []
    for i in range(layers):
        w = rng.standard_normal((oc, c // group, kernel, kernel)).astype(np.float32)
        w = fmt.prune_weight_magnitude(w, "oihw").astype(np_dtype)
        bias = rng.standard_normal(oc).astype(np_dtype)
        values, index = fmt.compress_weight(w, "oihw")
        dense_init += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(bias, f"B{i}")]
        sparse_init += [numpy_helper.from_array(values, f"V{i}"), numpy_helper.from_array(index, f"I{i}"),
                        numpy_helper.from_array(bias, f"B{i}")]
        dense_nodes.append(helper.make_node("Conv", ["X", f"W{i}", f"B{i}"], [f"Y{i}"], **attrs))
        sparse_nodes.append(helper.make_node("Conv2dCompress", ["X", f"V{i}", f"I{i}", f"B{i}"], [f"Y{i}"],
                                             domain="onnxsparse", **attrs))
        outputs.append(helper.make_tensor_value_info(f"Y{i}", elem, None))
    inputs = [helper.make_tensor_value_info("X", elem, list(x.shape))]
    return (_model(sparse_nodes, inputs, outputs, sparse_init, True),
            _model(dense_nodes, inputs, outputs, dense_init, False), {"X": x})


# ------------------------------------------------------------------------------------------
# timing


def session(model, threads: int, sparse: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if sparse:
        return onnxsparse.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def time_pair(sparse_model, dense_model, feeds, threads: int, min_repeats: int, budget_s: float,
              check: bool = True) -> tuple[float, float, int, tuple[float, float]]:
    """Median seconds per run of each model, runs interleaved; the spread is the 25th and 75th
    percentiles of the per-pair speedup (dense / sparse of each sparse-dense pair of runs)."""
    sparse = session(sparse_model, threads, True)
    dense = session(dense_model, threads, False)
    out_s = sparse.run(None, feeds)
    out_d = dense.run(None, feeds)  # warm up both (first-run allocations, page faults)
    if check:
        for a, b in zip(out_s, out_d):
            scale = max(1.0, float(np.abs(b.astype(np.float32)).max()))
            err = float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max())
            if err > 1e-3 * scale * (50 if a.dtype == np.float16 else 1):
                raise RuntimeError(f"sparse and dense outputs differ by {err} (scale {scale})")
    times_s, times_d = [], []
    start = time.perf_counter()
    while len(times_s) < min_repeats or (time.perf_counter() - start < budget_s and len(times_s) < 200):
        t0 = CLOCK()
        sparse.run(None, feeds)
        t1 = CLOCK()
        dense.run(None, feeds)
        t2 = CLOCK()
        times_s.append(t1 - t0)
        times_d.append(t2 - t1)
    ratios = [d / max(s, 1e-12) for s, d in zip(times_s, times_d)]
    spread = (float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75)))
    return statistics.median(times_s), statistics.median(times_d), len(times_s), spread


def row(kind, name, threads, layers, sparse_s, dense_s, repeats, spread=None, **shape) -> dict:
    r = {"kind": kind, "name": name, "threads": threads, **shape, "layers": layers,
         "sparse_us": round(sparse_s / layers * 1e6, 1), "dense_us": round(dense_s / layers * 1e6, 1),
         "speedup": round(dense_s / sparse_s, 3), "repeats": repeats}
    if spread is not None:
        r["speedup_iqr"] = [round(spread[0], 3), round(spread[1], 3)]
    if kind == "matmul":  # what the sparse kernel reaches: dense-equivalent GFLOP/s, packed-weight GB/s
        r["sparse_gflops"] = round(2 * shape["m"] * shape["k"] * shape["n"] / (r["sparse_us"] * 1e3), 1)
        packed_bytes = shape["k"] * shape["n"] * (9 if shape.get("dtype") == "float32" else 5) / 4
        r["sparse_weight_gbs"] = round(packed_bytes / (r["sparse_us"] * 1e3), 1)
    print(f"{kind:7s} {name:28s} t={threads} " + " ".join(f"{k}={v}" for k, v in shape.items())
          + f"  sparse {r['sparse_us']:10.1f} us  dense {r['dense_us']:10.1f} us  x{r['speedup']:.2f}"
          + (f" (iqr {spread[0]:.2f}-{spread[1]:.2f})" if spread is not None else ""), flush=True)
    return r


def bench_matmul(args, threads, rng) -> list[dict]:
    rows = []
    for dtype in args.dtypes:
        for k, n in MATMUL_KN:
            layers = layer_count(k * n * 4)
            sparse, dense = matmul_models(k, n, layers, dtype, rng)
            for m in args.m:
                feeds = {"A": rng.standard_normal((m, k)).astype(dtype)}
                s, d, reps, spread = time_pair(sparse, dense, feeds, threads, args.repeats, args.budget)
                rows.append(row("matmul", f"{k}x{n}", threads, layers, s, d, reps, spread, dtype=dtype, m=m, k=k,
                                n=n))
    return rows


def bench_conv(args, threads, rng) -> list[dict]:
    rows = []
    shapes = [(*shape, 1, 1) for shape in RESNET50_CONVS] + CONVNET_CONVS
    for dtype in args.dtypes:
        for batch in args.batches:
            for name, c, oc, hw, kernel, stride, pad, group, dilation in shapes:
                layers = layer_count(oc * c // group * kernel * kernel * 4, cap=4)
                sparse, dense, feeds = conv_models(batch, c, oc, hw, kernel, stride, pad, layers, dtype, rng,
                                                   group, dilation)
                s, d, reps, spread = time_pair(sparse, dense, feeds, threads, args.repeats, args.budget)
                out_hw = (hw + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
                rows.append(row("conv", name, threads, layers, s, d, reps, spread, dtype=dtype, batch=batch,
                                m=batch * out_hw * out_hw, k=kernel * kernel * c // group, n=oc // group))
    return rows


def sample_models() -> list[tuple[str, onnx.ModelProto, dict]]:
    from models import build_convnet, build_transformer

    rng = np.random.default_rng(0)
    cases = []
    bert = build_transformer(hidden=768, ffn=3072, layers=2, heads=12)
    for batch, seq in [(1, 1), (1, 128), (4, 128)]:
        cases.append((f"transformer768.b{batch}.s{seq}", bert,
                      {"tokens": rng.standard_normal((batch, seq, 768)).astype(np.float32)}))
    convnet = build_convnet(image_size=224)
    for batch in (1, 8):
        cases.append((f"convnet224.b{batch}", convnet,
                      {"image": rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)}))
    return cases


def bench_models(args, threads) -> list[dict]:
    """Each sample model compiled with the CPU target's per-layer choice (onnxsparse/data/perf_cpu.json,
    just written when --perf points there), so layers measured slower stay dense."""
    from onnxsparse import targets
    from onnxsparse.api import compile_model

    targets.load_table.cache_clear()
    policy = targets.make_policy("cpu")
    rows = []
    for name, model, feeds in sample_models():
        compiled = compile_model(model, policy=policy).model
        sparse_ops = sum(node.domain == "onnxsparse" for node in compiled.graph.node)
        s, d, reps, spread = time_pair(compiled.SerializeToString(), model.SerializeToString(), feeds, threads,
                                       args.repeats, args.budget)
        rows.append(row("model", name, threads, 1, s, d, reps, spread, dtype="float32", sparse_ops=sparse_ops))
    return rows


# ------------------------------------------------------------------------------------------
# reports


def machine() -> dict:
    info = {"python": platform.python_version(), "onnxruntime": ort.__version__, "numpy": np.__version__,
            "onnx": onnx.__version__, "cores": os.cpu_count()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        lines = cpuinfo.splitlines()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in lines if line.startswith("flags"))
        info["isa_flags"] = sorted(f for f in flags if f.startswith(("avx", "fma", "f16c")))
    except (OSError, StopIteration):
        pass
    try:
        info["compiler"] = subprocess.run(["c++", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        pass
    info["cpu_isa"] = os.environ.get("ONNXSPARSE_CPU_ISA", "auto (best of avx512, avx2, portable)")
    info["library"] = onnxsparse.get_library_path()
    info["loadavg_start"] = os.getloadavg()
    info["clock"] = "thread CPU time" if CLOCK is time.thread_time else "wall time"
    return info


def markdown(report: dict) -> str:
    env = report["machine"]
    lines = [
        "# CPU benchmark: onnxsparse 2:4 kernels vs ONNX Runtime dense (MLAS)",
        "",
        f"Command: `{report['command']}`  ",
        f"CPU: {env.get('cpu')} ({env.get('cores')} cores; {', '.join(env.get('isa_flags', []))})  ",
        f"onnxruntime {env['onnxruntime']}, onnx {env['onnx']}, numpy {env['numpy']}, Python {env['python']}; "
        f"{env.get('compiler', '')}, CMake Release (-O3); kernel ISA: {env['cpu_isa']}  ",
        f"Clock: {env.get('clock', 'wall time')}; load average at start / end: {env['loadavg_start']} / "
        f"{report.get('loadavg_end')} "
        "(other jobs share these cores: sparse and dense runs are interleaved, medians reported)",
        "",
        "Times are per layer (median over repeats); speedup = dense / sparse (> 1: sparse faster). "
        "Models are compiled with the CPU target's per-layer choice (onnxsparse/data/perf_cpu.json): "
        "sparse_ops counts the layers left sparse. Kernel versions and analysis: cpu_notes.md.",
        "",
    ]
    rows = report["rows"]
    for kind, title, cols in [
        ("matmul", "MatMul (fp32 unless noted)", ["dtype", "m", "k", "n"]),
        ("conv", "Conv layers: ResNet-50 and the sample convnet (implicit GEMM m = batch*OH*OW, "
         "k = KH*KW*C/group, n = OC/group)", ["dtype", "batch", "m", "k", "n"]),
        ("model", "Sample models end to end", ["sparse_ops"]),
    ]:
        sel = [r for r in rows if r["kind"] == kind]
        if not sel:
            continue
        lines += [f"## {title}", "", "| name | threads | " + " | ".join(cols) + " | sparse us | dense us | speedup |"
                  " speedup IQR |", "|---|---|" + "---|" * len(cols) + "---|---|---|---|"]
        for r in sel:
            iqr = "{:.2f}-{:.2f}".format(*r["speedup_iqr"]) if "speedup_iqr" in r else ""
            lines.append(f"| {r['name']} | {r['threads']} | " + " | ".join(str(r[c]) for c in cols)
                         + f" | {r['sparse_us']} | {r['dense_us']} | {r['speedup']:.2f} | {iqr} |")
        slower = [r for r in sel if r["speedup"] < 1.0]
        names = [f"{r['name']} ({r['dtype']}, t{r['threads']}" + (f", m={r['m']})" if "m" in r else ")") for r in slower]
        summary = f"{len(sel) - len(slower)} of {len(sel)} rows faster than dense"
        lines += ["", summary + (f"; slower: {', '.join(names)}" if slower else "") + ".", ""]
    return "\n".join(lines) + "\n"


def perf_table(rows: list[dict], env: dict) -> dict:
    """The compiler's table (onnxsparse/targets.py): one record per measured shape and thread count;
    a layer runs sparse only where every nearest record (any thread count) is not slower."""
    records = []
    for r in rows:
        if r["kind"] not in ("matmul", "conv"):
            continue
        records.append({"op": "gemm" if r["kind"] == "matmul" else "conv", "dtype": r["dtype"],
                        "m": r["m"], "k": r["k"], "n": r["n"], "threads": r["threads"],
                        "sparse_us": r["sparse_us"], "dense_us": r["dense_us"]})
    meta = {key: env.get(key) for key in ("cpu", "cores", "onnxruntime", "python", "cpu_isa")}
    meta["source"] = "benchmarks/cpu_bench.py"
    return {"target": "cpu", "meta": meta, "records": records}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cpu.json")
    parser.add_argument("--perf", type=Path, default=None, help="also write the compiler's table here")
    parser.add_argument("--only", nargs="+", choices=["matmul", "conv", "models"], default=["matmul", "conv", "models"])
    parser.add_argument("--m", type=int, nargs="+", default=MATMUL_M)
    parser.add_argument("--batches", type=int, nargs="+", default=CONV_BATCHES)
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=list(ELEM))
    parser.add_argument("--repeats", type=int, default=7, help="least timed runs per model")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timed runs per model, at least")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time each run by this thread's CPU time (--threads 1 only), not wall time")
    parser.add_argument("--render", type=Path, default=None, help="only rewrite the markdown of this JSON report")
    args = parser.parse_args(argv)
    if args.render is not None:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())))
        return 0

    global CLOCK
    if args.cpu_time:
        if args.threads != [1]:
            parser.error("--cpu-time needs --threads 1 (other threads' CPU time would not be counted)")
        CLOCK = time.thread_time
    arguments = sys.argv[1:] if argv is None else argv
    report = {"command": "python " + " ".join([os.path.relpath(__file__, REPO)] + arguments),
              "machine": machine(), "rows": []}
    rng = np.random.default_rng(0)
    for threads in args.threads:
        if "matmul" in args.only:
            report["rows"] += bench_matmul(args, threads, rng)
        if "conv" in args.only:
            report["rows"] += bench_conv(args, threads, rng)
    if args.perf is not None:  # before the models, which are compiled with it
        args.perf.parent.mkdir(parents=True, exist_ok=True)
        args.perf.write_text(json.dumps(perf_table(report["rows"], report["machine"]), indent=1) + "\n")
    if "models" in args.only:
        for threads in args.threads:
            report["rows"] += bench_models(args, threads)
    report["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
