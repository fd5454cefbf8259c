"""End to end int8 2:4: a transformers BERT, pruned, quantized by ONNX Runtime, compiled by onnxsparse.

GPU (H200, one call under a 540 s limit on 16 cores; estimated 4-7 minutes, not yet run on a GPU;
the rows still to time are skipped, and said so, after 470 s):

    python3 benchmarks/int8_e2e.py --cuda --stop-after 470 --work build/int8_e2e --out build/int8_e2e/cuda.json

CPU (the default without CUDA; BERT-base-sized, 4 layers):

    python3 benchmarks/int8_e2e.py --cpu [--layers 4] [--tokens 1,4,16] [--threads 2] [--isa auto,avx2]

Quick checks: ``--cpu --tiny``; ``--cuda --tiny --cpu-ep`` (the CUDA flow's logic on the CPU EP,
one run of each model instead of timing; what tests/test_int8_e2e_script.py runs); ``--cuda --cpu-ep
--layers 2 --batches 1`` (BERT-large's width at seq 384, 2 layers: 45 s on 2 cores).

The flow, as a user runs it: transformers' ``BertModel`` (random init, seed 0, no pooler) exported in
fp32 with torch.onnx (benchmarks/e2e_transformers_cuda.py's exporter: dynamo, TorchScript where it
fails), input_ids [B, T] -> last_hidden_state; ``onnxsparse prune --method magnitude`` (every
eligible layer to 2:4); ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel, int8 weights,
uint8 activations, MinMax calibration on ``--calib`` random token batches); ``onnxsparse compile``
(every eligible layer rewritten into QMatMulCompress). Every file is kept in ``--work`` and reused.

--cpu: BERT-base-sized (hidden 768, FFN 3072, 12 heads, ``--layers`` layers) at ``--tokens`` tokens,
  batch 1: ONNX Runtime's own run of the QDQ model (it fuses the QDQ nodes into its int8 kernels)
  against the compiled model on the library's kernels (``--isa``: the library's ``cpu_isa`` session
  option), same ``--threads``, runs interleaved, medians (benchmarks/int8_cpu_bench.py's timing).
  Relative errors (relative L2, as ``onnxsparse verify`` reports it) against the pruned fp32 model
  and against ONNX Runtime's run of the QDQ model.
--cuda: BERT-large (hidden 1024, 24 layers or ``--layers``, 16 heads, FFN 4096), seq 384, ``--batches`` (32).
  Baseline: the pruned model in fp16 (converted from the pruned fp32 model with onnxconverter-common;
  where that is absent, exported in fp16 and pruned, as benchmarks/e2e_transformers_cuda.py does) in
  ONNX Runtime's CUDA EP. Candidates: the compiled int8 model, and the dense QDQ model as ONNX
  Runtime's CUDA EP runs it (reported, flagged where it is slower than fp16: not a baseline anyone
  deploys). benchmarks/e2e_transformers_cuda.py's timing: io-binding on the GPU, without and with
  CUDA graphs, interleaved rounds, medians; the relative L2 of each candidate's output against
  fp16's on the same input is the accuracy loss. ``--int8-graph fp16`` (the default): only the products
  with a constant weight are quantized (``nodes_to_quantize``) and the int8 models' float parts are
  converted to fp16 like the baseline, the quantization nodes and sparse int8 ops kept in float32 with
  Casts around them; ``fp32``: every MatMul quantized and the graph left in float32 (the quantized
  attention products then run on CPU kernels with copies around them). ``--tune``: ``onnxsparse tune --provider cuda`` and
  ``compile --target cuda`` for the shape (layers the table times slower stay dense) instead of
  rewriting every layer. ``ONNXSPARSE_CUSPARSELT_TUNE`` defaults to ``search`` here: each distinct
  int8 GEMM is searched at its first call (the probe and warm-up runs), not run on cuSPARSELt's
  default algorithm.

Rows are printed as JSON, one per line, as they come (progress with timings on stderr); ``--out``
writes them all with the environment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import e2e_transformers_cuda as e2e  # noqa: E402

START = time.time()
CPU_BERT = dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, vocab_size=30522,
                max_position_embeddings=512)
CUDA_BERT = e2e.CONFIGS["bert"]  # BERT-large, as the fp16 e2e script measures it
TINY_BERT = e2e.TINY["bert"]
# --int8-graph fp16: no QuantizeLinear on the products' outputs (the quantizer adds one by default,
# which the compiled op then writes and a DequantizeLinear reads back for the bias Add).
WEIGHTS_ONLY_OPTIONS = {"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}
INT8_GRAPHS = {  # --cuda: how the int8 models are made from the pruned fp32 export
    "fp16": "weight products quantized (QDQ), everything else converted to fp16 as the baseline is; "
            "Casts around the quantization nodes and the sparse int8 ops, which stay float32",
    "fp32": "every MatMul quantized (QDQ, the attention products too), the graph in float32",
}
CUDA_SEQ, TINY_SEQ = e2e.BERT_SEQ, e2e.TINY_SEQ


def log(message: str) -> None:
    print(f"[int8-e2e {time.time() - START:6.1f}s] {message}", file=sys.stderr, flush=True)


OUT: dict = {}  # --out: the file and its header, rewritten with every row (a run cut short keeps its rows)


def emit(row: dict, rows: list[dict]) -> None:
    rows.append(row)
    print(json.dumps(row), flush=True)
    if OUT:
        OUT["path"].write_text(json.dumps({**OUT["header"], "rows": rows}, indent=1) + "\n")


# ------------------------------------------------------------------------------------ the flow

def export_fp32(work: Path, name: str, config: dict, seq: int) -> Path:
    """BertModel(config), random init (seed 0), fp32, input_ids [B, T] -> last_hidden_state."""
    path = work / f"{name}.onnx"
    if path.is_file():
        return path
    import torch
    from transformers import BertConfig, BertModel

    t0 = time.time()
    torch.manual_seed(0)
    net = BertModel(BertConfig(**config), add_pooling_layer=False).eval()
    how = e2e._export(e2e._LastHidden.wrap(net), torch.zeros((2, seq), dtype=torch.int64), "input_ids",
                      {0: "B", 1: "T"}, path)
    log(f"exported {path.name} in fp32 ({how}): {time.time() - t0:.0f} s")
    return path


def prune(path: Path) -> Path:
    out = path.with_name(path.stem + ".pruned.onnx")
    if not out.is_file():
        e2e.cli("prune", str(path), "-o", str(out), "--method", "magnitude", "-q")
    return out


def token_feed(vocab: int, shape, seed: int) -> dict:
    return {"input_ids": np.random.default_rng(seed).integers(0, vocab, size=shape, dtype=np.int64)}


def weight_products(path: Path) -> list[str]:
    """The MatMul/Gemm nodes whose second input is a constant, as the compiler's layer discovery
    resolves it (an initializer, a Constant's output or an Identity of either): the products a sparse
    int8 op can take. The attention's two products (both inputs activations) are not among them."""
    import onnx

    from onnxsparse.compiler.graph import ModelGraph
    from onnxsparse.compiler.layers import find_layers

    records = find_layers(ModelGraph(onnx.load(str(path), load_external_data=False)))
    return [record.node for record in records if record.layout is not None and record.op in ("MatMul", "Gemm")]


def quantize(pruned: Path, vocab: int, calib_shape, calib: int, weights_only: bool = False,
             reduce_range: bool = False) -> Path:
    """quantize_static: QDQ, per-channel int8 weights, uint8 activations, MinMax on random tokens.
    ``weights_only``: only the products with a constant weight (``nodes_to_quantize``), so that no
    quantized activation-by-activation product lands on a CPU kernel of ONNX Runtime's CUDA EP.
    ``reduce_range``: 7-bit weights (what ONNX Runtime advises for x86 CPUs without VNNI)."""
    out = pruned.with_name(pruned.stem + (".qdqw" if weights_only else ".qdq") + ("7" if reduce_range else "") + ".onnx")
    if out.is_file():
        return out
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([token_feed(vocab, calib_shape, seed=100 + i) for i in range(calib)])

        def get_next(self):
            return next(self.feeds, None)

    t0 = time.time()
    with contextlib.redirect_stdout(sys.stderr):
        quantize_static(str(pruned), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, reduce_range=reduce_range,
                        nodes_to_quantize=weight_products(pruned) if weights_only else None,
                        extra_options=WEIGHTS_ONLY_OPTIONS if weights_only else None)
    log(f"quantize_static (QDQ, per-channel, {calib} batches {list(calib_shape)}"
        f"{', weight products only' if weights_only else ''}{', reduce_range' if reduce_range else ''}): "
        f"{time.time() - t0:.0f} s")
    return out


def convert_fp16(model, blocked: tuple[str, ...] = ()):
    """``model`` with its float parts in fp16 (onnxconverter-common, keep_io_types=False; the op types
    in ``blocked`` stay float32 behind Casts), or None when onnxconverter-common is not installed."""
    try:
        from onnxconverter_common import float16
    except ImportError:
        return None
    return float16.convert_float_to_float16(model, keep_io_types=False,
                                            op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *blocked])


def to_fp16(path: Path) -> Path:
    """The model with its float parts in fp16, as the fp16 baseline; the quantization nodes and the
    sparse int8 ops stay float32 (their scales are float32), with Casts inserted around them by the
    converter."""
    out = path.with_name(path.stem + ".fp16.onnx")
    if out.is_file():
        return out
    import onnx

    t0 = time.time()
    model = onnx.load(str(path))
    known = {vi.name for vi in model.graph.value_info}
    for node in model.graph.node:  # shape inference knows no custom op: say which outputs are float
        float_out = node.op_type == "QMatMulCompress" and (len(node.input) < 8 or not node.input[7])
        if float_out and node.output[0] not in known:
            model.graph.value_info.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None))
    converted = convert_fp16(model, ("QMatMulCompress", "QuantizeLinear", "DequantizeLinear"))
    if converted is None:
        raise RuntimeError("--int8-graph fp16 converts with onnxconverter-common, which is not installed "
                           "(pip install onnxconverter-common, or --int8-graph fp32)")
    onnx.save(converted, str(out))
    log(f"{out.name}: float parts in fp16, quantization nodes and sparse int8 ops in float32: {time.time() - t0:.0f} s")
    return out


def fold_casts(path: Path) -> Path:
    """``onnxsparse compile`` of the fp16 model: the Casts to float16 after the sparse int8 ops fold into
    the ops (their fp16 form, the same values; docs/ops.md)."""
    out = path.with_name(path.stem + ".folded.onnx")
    if not out.is_file():
        e2e.cli("compile", str(path), "-o", str(out), "-q")
    return out


def compile_all(qdq: Path) -> tuple[Path, dict]:
    out = qdq.with_name(qdq.stem + ".sparse.onnx")
    report_path = out.with_suffix(".json")
    if not (out.is_file() and report_path.is_file()):
        report_path.write_text(e2e.cli("compile", str(qdq), "-o", str(out), "--json", "-q"))
    return out, json.loads(report_path.read_text())


def layer_summary(report: dict) -> dict:
    layers = report.get("layers", [])
    rewritten = [layer for layer in layers if layer.get("rewritten")]
    left: dict[str, int] = {}
    for layer in layers:
        if not layer.get("rewritten"):  # the reason without the names of nodes and tensors, counted
            reason = re.sub(r"'[^']*'", "'...'", layer.get("reason") or "no reason given")
            left[reason] = left.get(reason, 0) + 1
    return {"layers_int8_sparse": f"{len(rewritten)}/{len(layers)}", "left_dense": left}


def rel_l2(candidate: np.ndarray, reference: np.ndarray) -> float:
    """Relative L2 error, as ``onnxsparse verify`` reports it (``rel L2``)."""
    c, r = candidate.astype(np.float64).ravel(), reference.astype(np.float64).ravel()
    ref = float(r @ r)
    diff = float((c - r) @ (c - r))
    return (diff / ref) ** 0.5 if ref > 0 else diff ** 0.5


# ------------------------------------------------------------------------------------ environment

def machine() -> dict:
    from benchmarks.int8_cpu_bench import machine as cpu_machine

    info = cpu_machine()
    flags = set(info.get("flags", []))
    info["isa_flags"] = {"avx2": "avx2" in flags, "avx512": "avx512f" in flags,
                         "vnni": "avx512_vnni" in flags or "avx_vnni" in flags}
    return info


def versions() -> dict:
    import onnxruntime as ort

    out = {"python": platform.python_version(), "onnxruntime": ort.__version__}
    out.update(e2e.package_versions(("onnx", "torch", "transformers", "onnxconverter_common")))
    try:
        out["onnxsparse_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                                                  capture_output=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        out["onnxsparse_commit"] = "unknown"
    return out


# ------------------------------------------------------------------------------------ --cpu

def run_cpu(args, rows: list[dict]) -> None:
    import onnx
    import onnxruntime as ort

    from benchmarks.int8_cpu_bench import dense_session, sparse_session, time_interleaved

    args.layers = args.layers or 4
    config = dict(TINY_BERT) if args.tiny else dict(CPU_BERT, num_hidden_layers=args.layers)
    name = "bert_tiny_fp32" if args.tiny else f"bert_base_{args.layers}L_fp32"
    label = "bert-tiny" if args.tiny else f"bert-base-sized-{args.layers}L"
    vocab = config["vocab_size"]
    fp32 = export_fp32(args.work, name, config, TINY_SEQ)
    pruned = prune(fp32)
    qdq = quantize(pruned, vocab, (1, TINY_SEQ), args.calib, reduce_range=args.reduce_range)
    compiled, report = compile_all(qdq)
    summary = layer_summary(report)
    log(f"compiled: {summary['layers_int8_sparse']} layers into int8 sparse ops; left dense: {summary['left_dense']}")
    env, info = versions(), machine()
    quantized_model, compiled_model = onnx.load(str(qdq)), onnx.load(str(compiled))
    float_session = ort.InferenceSession(str(pruned), providers=["CPUExecutionProvider"])
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    for isa in args.isa:
        sessions = {"sparse": sparse_session(compiled_model, args.threads, isa),
                    "dense": dense_session(quantized_model, args.threads)}
        for tokens in args.tokens:
            feeds = token_feed(vocab, (1, tokens), seed=7)
            ours = sessions["sparse"].run(None, feeds)[0]
            theirs = sessions["dense"].run(None, feeds)[0]
            reference = float_session.run(None, feeds)[0]
            t0 = time.time()
            timed = time_interleaved(sessions, feeds, clock, args.repeats, args.budget)
            row = {"mode": "cpu", "model": label, "batch": 1, "tokens": tokens, "isa": isa, "threads": args.threads,
                   "clock": "thread CPU time" if clock is time.thread_time else "wall",
                   "ort_qdq_ms": round(timed["dense"] * 1e3, 3), "onnxsparse_int8_ms": round(timed["sparse"] * 1e3, 3),
                   "speedup": round(timed["dense"] / timed["sparse"], 3),
                   "speedup_iqr": [round(x, 3) for x in timed["dense_iqr"]], "repeats": timed["repeats"],
                   "rel_l2_vs_fp32": rel_l2(ours, reference), "ort_qdq_rel_l2_vs_fp32": rel_l2(theirs, reference),
                   "rel_l2_vs_ort_qdq": rel_l2(ours, theirs), **summary,
                   "machine": {k: info.get(k) for k in ("processor", "cores", "isa_flags")},
                   "load": os.getloadavg()[0], "versions": env}
            log(f"{label} tokens={tokens} isa={isa}: ORT QDQ {row['ort_qdq_ms']} ms, onnxsparse "
                f"{row['onnxsparse_int8_ms']} ms, x{row['speedup']} ({time.time() - t0:.0f} s)")
            emit(row, rows)


# ------------------------------------------------------------------------------------ --cuda

def fp16_baseline(args, pruned32: Path, config: dict, seq: int) -> tuple[Path, str]:
    """The pruned model in fp16: converted from the pruned fp32 model (onnxconverter-common), else
    exported in fp16 and pruned (the same weights before rounding; the 2:4 choice can differ where two
    weights of a group are equal in fp16)."""
    out = pruned32.with_name(pruned32.stem.replace("_fp32", "_fp16") + ".onnx")
    how_path = out.with_suffix(".how")
    if out.is_file() and how_path.is_file():
        return out, how_path.read_text()
    t0 = time.time()
    import onnx

    converted = convert_fp16(onnx.load(str(pruned32)))
    if converted is not None:
        onnx.save(converted, str(out))
        how = "pruned fp32 model converted to fp16 (onnxconverter-common, keep_io_types=False)"
    else:
        exported = e2e.export_bert(args.work, args.tiny, args.batches) if config in (CUDA_BERT, TINY_BERT) else None
        if exported is None:
            raise RuntimeError("no fp16 baseline: onnxconverter-common is absent and the configuration is not "
                               "e2e_transformers_cuda.py's")
        out = e2e.prune(exported)
        how = "exported in fp16 (e2e_transformers_cuda.py) and pruned separately (onnxconverter-common absent)"
    how_path = out.with_suffix(".how")
    how_path.write_text(how)
    log(f"fp16 baseline: {how}: {time.time() - t0:.0f} s")
    return out, how


def run_cuda(args, rows: list[dict]) -> None:
    layers = args.layers or CUDA_BERT["num_hidden_layers"]
    config = TINY_BERT if args.tiny else dict(CUDA_BERT, num_hidden_layers=layers)
    seq = TINY_SEQ if args.tiny else CUDA_SEQ
    full = layers == CUDA_BERT["num_hidden_layers"]
    label = "bert-tiny" if args.tiny else ("bert-large" if full else f"bert-large-{layers}L")
    name = "bert_tiny_fp32" if args.tiny else ("bert_large_fp32" if full else f"bert_large_{layers}L_fp32")
    vocab = config["vocab_size"]
    fp32 = export_fp32(args.work, name, config, seq)
    pruned32 = prune(fp32)
    fp16_graph = args.int8_graph == "fp16"
    qdq = quantize(pruned32, vocab, (1, seq), args.calib, weights_only=fp16_graph, reduce_range=args.reduce_range)
    fp16, how = fp16_baseline(args, pruned32, config, seq)
    env = versions()
    env_gpu = e2e.environment()
    if not args.cpu_ep:
        # Without a tuning cache the int8 GEMMs would run cuSPARSELt's default algorithm (docs: 0.24-0.64x
        # of dense at M >= 128): each distinct problem is searched at its first call instead (about 5 s
        # each, written to the cache, reused by every later session), unless the caller chose otherwise.
        os.environ.setdefault("ONNXSPARSE_CUSPARSELT_TUNE", "search")
        log(f"ONNXSPARSE_CUSPARSELT_TUNE={os.environ['ONNXSPARSE_CUSPARSELT_TUNE']}")
    for batch in args.batches:
        shape = [batch, seq]
        model = e2e.Model(label, fp16, "input_ids", [shape], True, vocab=vocab)
        if args.tune and not args.cpu_ep:
            compiled, report = e2e.tune_and_compile(model, qdq, shape, args.work / "tune_int8.json",
                                                    args.tune_budget, 0)
            placement = "tune --provider cuda + compile --target cuda"
        else:
            compiled, report = compile_all(qdq)
            placement = "compile (every eligible layer)"
        if fp16_graph:  # the float parts in fp16, as the baseline; compile and tune read the fp32 QDQ model
            compiled = to_fp16(compiled)
        summary = layer_summary(report)
        log(f"{label} {shape}: {summary['layers_int8_sparse']} layers int8 sparse ({placement})")
        base = {"mode": "cuda" if not args.cpu_ep else "cuda-logic-on-cpu-ep", "model": label,
                "input": "x".join(map(str, shape)), "baseline": "fp16 dense (pruned), ONNX Runtime CUDA EP",
                "fp16_baseline_made": how, "placement": placement, "int8_graph": INT8_GRAPHS[args.int8_graph],
                "cusparselt_tune": os.environ.get("ONNXSPARSE_CUSPARSELT_TUNE", "cache (default)"), **summary}
        candidates = [("onnxsparse int8 (compiled QDQ)", compiled),
                      ("ONNX Runtime dense QDQ", to_fp16(qdq) if fp16_graph else qdq)]
        if fp16_graph:  # and with the Casts after the int8 ops folded into them (compile again), first
            candidates.insert(0, ("onnxsparse int8 (compiled QDQ, fp16 form)", fold_casts(compiled)))
        if args.cpu_ep:  # one run of each on the CPU EP: the outputs, not the times
            for what, path in candidates:
                row = {**base, "candidate": what}
                try:
                    row.update(e2e.check_cpu(fp16, path, model, shape))
                    row["rel_l2_vs_fp16"] = row.pop("rel_diff")
                except Exception as exc:  # noqa: BLE001 - reported in the row
                    row["error"] = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                emit(row, rows)
            continue
        for what, path in candidates:  # the compiled model's rows first: they are what the run is for
            for graph in args.graph:
                row = {**base, "candidate": what, "cuda_graph": "on" if graph else "off"}
                t0 = time.time()
                if args.stop_after and t0 - START > args.stop_after:
                    row["skipped"] = f"--stop-after {args.stop_after:g} s reached"
                    log(f"{label} {shape} graph={'on' if graph else 'off'} {what}: {row['skipped']}")
                    emit(row, rows)
                    continue
                try:
                    timed = e2e.time_pair(fp16, path, model, shape, graph, args.rounds, args.budget)
                    row.update({"fp16_ms": timed["dense_ms"], "candidate_ms": timed["compiled_ms"],
                                "speedup_vs_fp16": timed["speedup"], "round_speedups": timed["round_speedups"],
                                "runs": timed["runs"], "rel_l2_vs_fp16": timed["rel_diff"]})
                    if path == qdq and timed["speedup"] < 1:
                        row["note"] = ("ONNX Runtime's CUDA EP runs the dense QDQ model slower than the fp16 "
                                       "model: not a baseline anyone deploys")
                except Exception as exc:  # noqa: BLE001 - one failing case is reported, the rest still run
                    row["error"] = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                row["versions"], row["gpu"] = env, env_gpu.get("gpu")
                log(f"{label} {shape} graph={'on' if graph else 'off'} {what}: "
                    f"{row.get('candidate_ms', '-')} ms vs fp16 {row.get('fp16_ms', '-')} ms "
                    f"(x{row.get('speedup_vs_fp16', '-')}) {row.get('error', '')} ({time.time() - t0:.0f} s)")
                emit(row, rows)


# ------------------------------------------------------------------------------------ main

def main(argv=None) -> int:
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--cpu", action="store_true", help="BERT-base-sized on the CPU (default without CUDA)")
    mode.add_argument("--cuda", action="store_true", help="BERT-large in the CUDA EP (default with CUDA)")
    parser.add_argument("--tiny", action="store_true", help="a tiny BERT (hidden 64, 2 layers): a quick check")
    parser.add_argument("--cpu-ep", action="store_true", help="with --cuda: the flow on the CPU EP, no timing")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "int8_e2e",
                        help="folder for the exported, pruned, quantized and compiled models (reused)")
    parser.add_argument("--out", type=Path, help="write the rows and the environment as JSON")
    parser.add_argument("--reduce-range", action="store_true",
                        help="quantize with reduce_range=True: 7-bit weights (exact in ONNX Runtime's uint8 x int8 "
                             "kernels on x86 CPUs without VNNI; the library's AVX2 kernel sums byte pairs)")
    parser.add_argument("--layers", type=int, help="encoder layers (default: --cpu 4, --cuda 24)")
    parser.add_argument("--tokens", default="1,4,16", help="--cpu: tokens per run, batch 1")
    parser.add_argument("--threads", type=int, default=2, help="--cpu: intra-op threads of both sessions")
    parser.add_argument("--isa", default="auto", help="--cpu: the library's cpu_isa, comma-separated "
                                                       "(auto, avx512, avx2, portable)")
    parser.add_argument("--repeats", type=int, default=15, help="--cpu: at least this many interleaved runs")
    parser.add_argument("--batches", default="32", help="--cuda: batches at seq 384")
    parser.add_argument("--graph", default="off,on", help="--cuda: CUDA graphs off, on or off,on")
    parser.add_argument("--rounds", type=int, default=5, help="--cuda: interleaved rounds")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timing per row (default: cpu 8, cuda 3, --tiny 1)")
    parser.add_argument("--calib", type=int, default=None, help="calibration batches (default 4; --cuda 2)")
    parser.add_argument("--int8-graph", default="fp16", choices=sorted(INT8_GRAPHS),
                        help="--cuda: the int8 models' graph (fp16: weight products only, the rest in fp16)")
    parser.add_argument("--tune", action="store_true", help="--cuda: tune + compile --target cuda")
    parser.add_argument("--stop-after", type=float, default=0,
                        help="--cuda: seconds after which the remaining timed rows are skipped (0: never)")
    parser.add_argument("--tune-budget", type=float, default=0.3, help="--tune: tune's --budget")
    args = parser.parse_args(argv)
    cuda = args.cuda or (not args.cpu and has_cuda)
    ints = lambda text: [int(v) for v in text.split(",") if v.strip()]  # noqa: E731
    try:
        args.tokens, args.batches = ints(args.tokens), ints(args.batches)
    except ValueError:
        print("int8_e2e: --tokens and --batches take comma-separated integers", file=sys.stderr)
        return 2
    if args.tiny and args.batches == [32]:
        args.batches = [2]
    args.isa = [v.strip() for v in args.isa.split(",") if v.strip()]
    bad = sorted(set(args.isa) - {"auto", "avx512", "avx2", "portable"})
    if bad or not args.isa:
        print(f"int8_e2e: unknown --isa {','.join(bad)} (auto, avx512, avx2, portable)", file=sys.stderr)
        return 2
    args.graph = [g.strip() == "on" for g in args.graph.split(",") if g.strip()]
    if args.budget is None:
        args.budget = 1.0 if args.tiny else (3.0 if cuda else 8.0)
    if args.calib is None:
        args.calib = 2 if cuda and not args.tiny else 4
    if args.cpu_ep and not cuda:
        print("int8_e2e: --cpu-ep goes with --cuda", file=sys.stderr)
        return 2
    if cuda and not args.cpu_ep and not has_cuda:
        print("int8_e2e: onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu, or --cpu, or "
              "--cuda --cpu-ep for the flow without timing)", file=sys.stderr)
        return 2
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        print(f"int8_e2e: needs torch and transformers ({exc})", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if args.out:
        command = " ".join(["python3", "benchmarks/int8_e2e.py", *(sys.argv[1:] if argv is None else argv)])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        OUT.update(path=args.out, header={"command": command, "versions": versions(), "machine": machine()})
    try:
        (run_cuda if cuda else run_cpu)(args, rows)
    except RuntimeError as exc:
        print(f"int8_e2e: {str(exc).splitlines()[0][:500]}", file=sys.stderr)
        return 1
    log("done")
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
