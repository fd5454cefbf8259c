"""int8 CPU benchmark: onnxsparse's int8 2:4 kernels against ONNX Runtime's own int8 execution.

    python benchmarks/int8_cpu_bench.py --isa avx2 avx512 --m 1 4 16 64 --tokens 1 4 16

Two parts, each on every kernel path asked for (``--isa``: the library's ``cpu_isa`` session
option; ONNX Runtime's own kernels always take the best path the processor has):

- GEMM: ``--layers`` independent 4096x4096 layers (``--shapes``: KxN ones instead, as many as
  hold the same bytes) on one uint8 input A [M, K] (their weights together well past the L3
  cache, as a model's are), uint8 output, per-channel weight scales.
  Dense: ONNX Runtime's ``QLinearMatMul`` and the QDQ form ``DequantizeLinear -> MatMul ->
  QuantizeLinear`` (what ``quantize_static`` writes; ONNX Runtime fuses it), on the same integers.
  Sparse: ``QMatMulCompress`` with the compressed weight. Times are per layer.
- Encoder: a BERT-base-sized encoder (hidden 768, FFN 3072, 12 heads, ``--encoder-layers``
  layers, 2:4 weights) quantized by ONNX Runtime's ``quantize_static`` (QDQ, per-channel, int8
  weights, uint8 activations), run as quantized by ONNX Runtime (dense) and compiled by
  onnxsparse (sparse), at ``--tokens`` tokens, end to end.

Every row times the sparse and the dense models in one process, same inputs, same
``intra_op_num_threads``, runs interleaved (sparse, dense, sparse, ...) so that load from other
processes hits both alike; it reports medians and the quartiles of the per-pair speedup. With one
thread (the default) each run is timed by this thread's CPU time (ONNX Runtime then runs the
kernels on the calling thread), which leaves out the time slices other processes take on a shared
machine; ``--wall`` times wall clock instead. The machine (processor, cores, flags, load) is
printed first and written with the results (``--out``, JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import onnxruntime as ort  # noqa: E402

import onnxsparse  # noqa: E402
from onnxsparse import format as fmt  # noqa: E402

OPSET, IR_VERSION = 17, 10


def machine() -> dict:
    info = {"processor": platform.processor(), "cores": os.cpu_count(), "onnxruntime": ort.__version__}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        info["processor"] = next(line.split(":", 1)[1].strip() for line in text.splitlines()
                                 if line.startswith("model name"))
        flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
        info["flags"] = sorted(f for f in flags if f.startswith("avx512") or f in ("avx2", "avx_vnni", "fma"))
    except (OSError, StopIteration):
        pass
    info["load"] = os.getloadavg()[0]
    return info


# ------------------------------------------------------------------------------------------
# models


def _model(nodes, inputs, outputs, initializers, custom: bool) -> bytes:
    graph = helper.make_graph(nodes, "bench", inputs, outputs, initializer=initializers)
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid("onnxsparse", 1)] if custom else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION).SerializeToString()


def int8_24(rng, k: int, n: int, limit: int = 127) -> np.ndarray:
    """An int8 [K, N] weight, 2:4 along K, values in [-limit, limit] (symmetric quantization: 127;
    ONNX Runtime's quantizer with reduce_range: 64)."""
    w = rng.integers(-limit, limit + 1, (k // 4, 4, n)).astype(np.int8)
    keep = np.argsort(rng.random((k // 4, 4, n)), axis=1) < 2
    return (w * keep).reshape(k, n).astype(np.int8)


def gemm_models(k: int, n: int, layers: int, rng, limit: int = 127) -> dict[str, bytes]:
    """The three forms of `layers` int8 MatMul layers [M, K] x [K, N] -> uint8 [M, N]."""
    common = [numpy_helper.from_array(np.float32(0.02), "a_scale"), numpy_helper.from_array(np.uint8(128), "a_zp"),
              numpy_helper.from_array(np.float32(0.25), "y_scale"), numpy_helper.from_array(np.uint8(128), "y_zp")]
    forms = {"sparse": ([], list(common)), "qlinear": ([], list(common)), "qdq": ([], list(common))}
    outputs = []
    for i in range(layers):
        w = int8_24(rng, k, n, limit)
        w_scale = (rng.random(n).astype(np.float32) * 0.002 + 0.0005)
        values, index = fmt.compress_weight(w, "kn")
        nodes, init = forms["sparse"]
        init += [numpy_helper.from_array(values, f"V{i}"), numpy_helper.from_array(index, f"I{i}"),
                 numpy_helper.from_array(w_scale, f"ws{i}")]
        nodes.append(helper.make_node("QMatMulCompress", ["A", "a_scale", "a_zp", f"V{i}", f"I{i}", f"ws{i}", "",
                                                          "y_scale", "y_zp"], [f"Y{i}"], domain="onnxsparse"))
        for form in ("qlinear", "qdq"):
            nodes, init = forms[form]
            init += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(w_scale, f"ws{i}"),
                     numpy_helper.from_array(np.zeros(n, np.int8), f"wzp{i}")]
        forms["qlinear"][0].append(helper.make_node(
            "QLinearMatMul", ["A", "a_scale", "a_zp", f"W{i}", f"ws{i}", f"wzp{i}", "y_scale", "y_zp"], [f"Y{i}"]))
        forms["qdq"][0].extend([
            helper.make_node("DequantizeLinear", [f"W{i}", f"ws{i}", f"wzp{i}"], [f"Wf{i}"], axis=1),
            helper.make_node("MatMul", ["Af", f"Wf{i}"], [f"Yf{i}"]),
            helper.make_node("QuantizeLinear", [f"Yf{i}", "y_scale", "y_zp"], [f"Y{i}"]),
        ])
        outputs.append(helper.make_tensor_value_info(f"Y{i}", TensorProto.UINT8, ["M", n]))
    forms["qdq"][0].insert(0, helper.make_node("DequantizeLinear", ["A", "a_scale", "a_zp"], ["Af"]))
    inputs = [helper.make_tensor_value_info("A", TensorProto.UINT8, ["M", k])]
    return {name: _model(nodes, inputs, outputs, init, name == "sparse") for name, (nodes, init) in forms.items()}


def encoder_models(layers: int, rng, reduce_range: bool = False) -> tuple[onnx.ModelProto, onnx.ModelProto, dict]:
    """BERT-base-sized encoder: pruned float -> quantize_static (QDQ, per-channel) -> compiled."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from models import build_transformer
    from onnxsparse.api import compile_model

    float_model = build_transformer(hidden=768, ffn=3072, layers=layers, heads=12)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"tokens": rng.standard_normal((1, 16, 768)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
        onnx.save(float_model, src)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, reduce_range=reduce_range)
        quantized = onnx.load(str(dst))
    compiled = compile_model(quantized)
    counts = {"sparse_layers": len(compiled.rewritten), "candidate_layers": len(compiled.layers)}
    return quantized, compiled.model, counts


# ------------------------------------------------------------------------------------------
# timing


def options(threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return opts


def dense_session(model, threads: int) -> ort.InferenceSession:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, sess_options=options(threads), providers=["CPUExecutionProvider"])


def sparse_session(model, threads: int, isa: str) -> ort.InferenceSession:
    opts = onnxsparse.session_options(options(threads), cpu_isa=isa)
    return onnxsparse.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def time_interleaved(sessions: dict, feeds, clock, min_repeats: int, budget_s: float) -> dict:
    """Median seconds per run of each session, runs interleaved; quartiles of each dense/sparse ratio."""
    for s in sessions.values():
        s.run(None, feeds)  # warm up (first-run allocations, page faults)
    times = {name: [] for name in sessions}
    start = time.perf_counter()
    while (len(times["sparse"]) < min_repeats
           or (time.perf_counter() - start < budget_s and len(times["sparse"]) < 400)):
        for name, s in sessions.items():
            t0 = clock()
            s.run(None, feeds)
            times[name].append(clock() - t0)
    result = {name: statistics.median(t) for name, t in times.items()}
    for name in sessions:
        if name != "sparse":
            ratios = [d / max(s, 1e-12) for s, d in zip(times["sparse"], times[name])]
            result[f"{name}_iqr"] = (float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75)))
    result["repeats"] = len(times["sparse"])
    return result


def check_outputs(sparse, dense, feeds, steps: int) -> int:
    """The largest difference in quantization steps between the two models' uint8 outputs."""
    worst = 0
    for a, b in zip(sparse.run(None, feeds), dense.run(None, feeds)):
        worst = max(worst, int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max()))
    if worst > steps:
        raise RuntimeError(f"sparse and dense outputs differ by {worst} steps")
    return worst


def bench_gemm(args, clock, rng) -> list[dict]:
    rows = []
    for k, n in args.shapes:
        # As many layers as --layers 4096x4096 ones hold bytes: weights well past the L3 cache.
        layers = max(args.layers, round(args.layers * 4096 * 4096 / (k * n)))
        rows += bench_gemm_shape(args, clock, rng, k, n, layers)
    return rows


def bench_gemm_shape(args, clock, rng, k: int, n: int, layers: int) -> list[dict]:
    rows = []
    models = gemm_models(k, n, layers, rng, 64 if args.reduce_range else 127)
    for isa in args.isa:
        sessions = {"sparse": sparse_session(models["sparse"], args.threads, isa),
                    "qlinear": dense_session(models["qlinear"], args.threads),
                    "qdq": dense_session(models["qdq"], args.threads)}
        for m in args.m:
            feeds = {"A": rng.integers(0, 256, (m, k)).astype(np.uint8)}
            steps = check_outputs(sessions["sparse"], sessions["qlinear"], feeds, 1)
            r = time_interleaved(sessions, feeds, clock, args.repeats, args.budget)
            row = {"part": "gemm", "isa": isa, "m": m, "k": k, "n": n, "threads": args.threads,
                   "layers": layers, "repeats": r["repeats"], "max_step_difference": steps,
                   "sparse_us": round(r["sparse"] / layers * 1e6, 1)}
            for form in ("qlinear", "qdq"):
                row[f"{form}_us"] = round(r[form] / layers * 1e6, 1)
                row[f"speedup_vs_{form}"] = round(r[form] / r["sparse"], 3)
                row[f"speedup_vs_{form}_iqr"] = [round(x, 3) for x in r[f"{form}_iqr"]]
            rows.append(row)
            print(f"gemm    isa={isa:6s} M={m:<3d} {k}x{n}  sparse {row['sparse_us']:8.1f} us  "
                  f"QLinearMatMul {row['qlinear_us']:8.1f} us (x{row['speedup_vs_qlinear']:.2f}, iqr "
                  f"{row['speedup_vs_qlinear_iqr'][0]:.2f}-{row['speedup_vs_qlinear_iqr'][1]:.2f})  "
                  f"QDQ {row['qdq_us']:8.1f} us (x{row['speedup_vs_qdq']:.2f})  n={r['repeats']}", flush=True)
    return rows


def bench_encoder(args, clock, rng) -> list[dict]:
    rows = []
    quantized, compiled, counts = encoder_models(args.encoder_layers, rng, args.reduce_range)
    print(f"encoder: {counts['sparse_layers']} of {counts['candidate_layers']} layers rewritten into int8 sparse ops",
          flush=True)
    for isa in args.isa:
        sessions = {"sparse": sparse_session(compiled, args.threads, isa),
                    "dense": dense_session(quantized, args.threads)}
        for tokens in args.tokens:
            feeds = {"tokens": rng.standard_normal((1, tokens, 768)).astype(np.float32)}
            out_s, out_d = sessions["sparse"].run(None, feeds)[0], sessions["dense"].run(None, feeds)[0]
            rel = float(np.linalg.norm(out_s - out_d) / max(np.linalg.norm(out_d), 1e-12))
            r = time_interleaved(sessions, feeds, clock, args.repeats, args.budget)
            row = {"part": "encoder", "isa": isa, "tokens": tokens, "layers": args.encoder_layers,
                   "threads": args.threads, "repeats": r["repeats"], "sparse_ms": round(r["sparse"] * 1e3, 3),
                   "dense_ms": round(r["dense"] * 1e3, 3), "speedup": round(r["dense"] / r["sparse"], 3),
                   "speedup_iqr": [round(x, 3) for x in r["dense_iqr"]], "relative_difference": rel,
                   **counts}
            rows.append(row)
            print(f"encoder isa={isa:6s} tokens={tokens:<3d} layers={args.encoder_layers}  sparse "
                  f"{row['sparse_ms']:8.3f} ms  dense QDQ {row['dense_ms']:8.3f} ms  x{row['speedup']:.2f} (iqr "
                  f"{row['speedup_iqr'][0]:.2f}-{row['speedup_iqr'][1]:.2f})  rel.diff {rel:.2e}  n={r['repeats']}",
                  flush=True)
    return rows


def markdown(info: dict, command: str, rows: list[dict]) -> str:
    lines = [f"# int8 2:4 on the CPU: onnxsparse against ONNX Runtime's int8 kernels", "",
             f"Machine: {info.get('processor')}, {info.get('cores')} cores ({' '.join(info.get('flags', []))}), "
             f"ONNX Runtime {info['onnxruntime']}, load average {info['load']:.1f} before and "
             f"{info.get('load_after', float('nan')):.1f} after (a shared machine). Command: `{command}`.", ""]
    gemm = [r for r in rows if r["part"] == "gemm"]
    if gemm:
        lines += ["KxN layers, uint8 A and Y, per-channel int8 weights; times per layer (median), speedup "
                  "= dense / sparse (quartiles of the per-pair ratio).", "",
                  "| path | KxN | M | sparse us | QLinearMatMul us | speedup | QDQ us | speedup |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in gemm:
            lines.append(f"| {r['isa']} | {r['k']}x{r['n']} | {r['m']} | {r['sparse_us']} | {r['qlinear_us']} | {r['speedup_vs_qlinear']} "
                         f"({r['speedup_vs_qlinear_iqr'][0]}-{r['speedup_vs_qlinear_iqr'][1]}) | {r['qdq_us']} | "
                         f"{r['speedup_vs_qdq']} |")
        lines.append("")
    enc = [r for r in rows if r["part"] == "encoder"]
    if enc:
        lines += [f"BERT-base-sized encoder ({enc[0]['layers']} layers, hidden 768, FFN 3072), quantize_static QDQ "
                  f"per-channel; {enc[0]['sparse_layers']} of its {enc[0]['candidate_layers']} MatMul/Gemm layers "
                  "rewritten into QMatMulCompress (the others stay dense, each with the compiler's reason); whole model, median ms.",
                  "",
                  "| path | tokens | sparse ms | dense QDQ ms | speedup | relative difference |", "|---|---|---|---|---|---|"]
        for r in enc:
            lines.append(f"| {r['isa']} | {r['tokens']} | {r['sparse_ms']} | {r['dense_ms']} | {r['speedup']} "
                         f"({r['speedup_iqr'][0]}-{r['speedup_iqr'][1]}) | {r['relative_difference']:.1e} |")
        lines.append("")
    return "\n".join(lines)


def shape_arg(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not KxN (e.g. 768x3072)") from None
    if k <= 0 or n <= 0 or k % 4:
        raise argparse.ArgumentTypeError(f"shape {text!r}: K and N must be positive and K a multiple of 4")
    return k, n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--isa", nargs="+", default=["avx2", "avx512"], choices=["portable", "avx2", "avx512"])
    parser.add_argument("--m", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--layers", type=int, default=8, help="4096x4096 layers per GEMM model (default 8: 128 MB); "
                        "smaller shapes get as many layers as hold the same bytes")
    parser.add_argument("--shapes", nargs="+", type=shape_arg, default=[(4096, 4096)], metavar="KxN",
                        help="GEMM shapes (default 4096x4096; BERT-base: 768x768 768x3072 3072x768)")
    parser.add_argument("--tokens", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--encoder-layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15, help="at least this many interleaved runs")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per row beyond the minimum repeats")
    parser.add_argument("--wall", action="store_true", help="time wall clock (default with 1 thread: CPU time)")
    parser.add_argument("--skip-gemm", action="store_true")
    parser.add_argument("--skip-encoder", action="store_true")
    parser.add_argument("--reduce-range", action="store_true",
                        help="7-bit weights (|w| <= 64), as quantize_static(..., reduce_range=True) writes them; "
                             "the AVX2 kernel then sums byte pairs with vpmaddubsw, exactly")
    parser.add_argument("--out", type=Path, help="write the rows and the machine as JSON")
    args = parser.parse_args(argv)

    clock = time.thread_time if args.threads == 1 and not args.wall else time.perf_counter
    info = machine()
    print(f"machine: {info.get('processor')}, {info.get('cores')} cores, {' '.join(info.get('flags', []))}; "
          f"ONNX Runtime {info['onnxruntime']}; load {info['load']:.1f}; threads {args.threads}; "
          f"clock {'thread CPU time' if clock is time.thread_time else 'wall'}", flush=True)
    rng = np.random.default_rng(0)
    rows = []
    if not args.skip_gemm:
        rows += bench_gemm(args, clock, rng)
    if not args.skip_encoder:
        rows += bench_encoder(args, clock, rng)
    info["load_after"] = os.getloadavg()[0]
    if args.out:
        command = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
        args.out.write_text(json.dumps({"machine": info, "command": command, "rows": rows}, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(markdown(info, command, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
