"""Conv2dCompress's CUDA forms side by side, per conv of the ResNet-50-like net (models/bench_nets.py).

    python benchmarks/cuda/conv_forms.py [--batch 32] [--relu] [--minutes 2.5] [--forms nhwc,nchw,nchw_padded]

For each distinct eligible conv: ONNX Runtime's dense Conv (+ bias, + Relu with --relu, fused by ONNX
Runtime) against the compiled Conv2dCompress with each form forced through ONNXSPARSE_CUDA_CONV_FORM
(nhwc: transposes around the GEMM; nchw: the per-image strided-batched cuSPARSELt product, OH*OW
unpadded where cuSPARSELt takes it; nchw_padded: OH*OW padded to 8), and the form `auto` picks.
Kernel time per layer under CUDA-graph replay (8 layers per model, as gpu_bench.py), cuSPARSELt
configurations searched at the first call (onnxsparse.cusparselt.tune=search, one cache file for the
run). A form that does not apply runs NHWC (the op's log says which ran). Prints one line per conv
as it goes and stops starting convs after --minutes.

With --gemm, the same product as a plain GEMM beside each conv: X [M = B*OH*OW, K = KH*KW*C] times
the weight, ONNX Runtime's dense MatMul (cuBLAS) and MatMulCompress (cuSPARSELt, searched). The
sparse GEMM is what any implicit-GEMM sparse conv on the same tensor-core path costs at best: its
operand already in place, no im2col and no layout change. The summary weights each distinct conv
by how often the net holds it and, against the dense net's whole time at this batch (CUDA graph),
gives the end-to-end ceiling of each: the best form measured, and that implicit-GEMM bound.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def models(spec: dict, relu: bool, rng) -> tuple[bytes, bytes, int]:
    """(dense, compiled, OH): LAYERS convs of one spec reading one X, bias (and Relu) after each."""
    from models.bench_nets import LAYERS, _w
    from onnxsparse.api import compile_model

    c, oc, k, hw = spec["c"], spec["oc"], spec["kernel"], spec["hw"]
    ohw = (hw + 2 * spec["pad"] - k) // spec["stride"] + 1
    f16 = onnx.TensorProto.FLOAT16
    nodes, inits = [], []
    for i in range(LAYERS):
        inits += [onnx.numpy_helper.from_array(_w(rng, (oc, c, k, k), "oihw"), f"W{i}"),
                  onnx.numpy_helper.from_array((rng.standard_normal(oc) * 0.1).astype(np.float16), f"B{i}")]
        nodes.append(oh.make_node("Conv", ["X", f"W{i}", f"B{i}"], [f"C{i}" if relu else f"Y{i}"], kernel_shape=[k, k],
                                  strides=[spec["stride"]] * 2, pads=[spec["pad"]] * 4))
        if relu:
            nodes.append(oh.make_node("Relu", [f"C{i}"], [f"Y{i}"]))
    g = oh.make_graph(nodes, "convs", [oh.make_tensor_value_info("X", f16, ["B", c, hw, hw])],
                      [oh.make_tensor_value_info(f"Y{i}", f16, ["B", oc, ohw, ohw]) for i in range(LAYERS)],
                      initializer=inits)
    dense = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    dense.ir_version = 10
    return dense.SerializeToString(), compile_model(dense).model.SerializeToString(), ohw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--relu", action="store_true", help="a Relu after each conv (fused by both sides)")
    ap.add_argument("--forms", default="nhwc,nchw,nchw_padded,auto")
    ap.add_argument("--minutes", type=float, default=2.5)
    ap.add_argument("--gemm", action="store_true",
                    help="also the product as a plain GEMM (dense MatMul, MatMulCompress) and the net-level summary")
    args = ap.parse_args()
    import onnxruntime as ort

    from gpu_bench import LAYERS, time_e2e, time_graph, time_pair
    from models.bench_nets import conv_specs, gemm_models, resnet_model
    from onnxsparse.session import session_options

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print("conv_forms: onnxruntime has no CUDAExecutionProvider", file=sys.stderr)
        return 2
    os.environ["ONNXSPARSE_CUSPARSELT_TUNE"] = "search"
    os.environ.setdefault("ONNXSPARSE_CUSPARSELT_CACHE", str(Path(tempfile.mkdtemp()) / "cusparselt_tuning.txt"))
    forms = [f for f in args.forms.split(",") if f]
    b = args.batch
    print(f"batch {b}, {'bias + Relu' if args.relu else 'bias'}, us per layer (CUDA-graph replay, {LAYERS} layers)")
    gemm_cols = ["gemm dense", "gemm sparse"] if args.gemm else []
    print("| conv | count | M=B*OH*OW | K | N | dense | " + " | ".join(forms + gemm_cols) + " | best x |"
          + (" gemm x |" if args.gemm else ""))
    print("|---|---|---|---|---|---|" + "---|" * (len(forms) + len(gemm_cols)) + "---|" + ("---|" if args.gemm else ""))
    deadline = time.time() + args.minutes * 60
    rng = np.random.default_rng(3)
    net = resnet_model()
    counts = spec_counts(net)
    rows = []
    for spec in conv_specs(net):
        if time.time() > deadline:
            print("(stopped: --minutes reached)")
            break
        dense, sparse, ohw = models(spec, args.relu, rng)
        c, oc, hw = spec["c"], spec["oc"], spec["hw"]
        x_shape, y_shape = [b, c, hw, hw], [b, oc, ohw, ohw]
        times = {}
        for form in ["dense", *forms]:
            os.environ["ONNXSPARSE_CUDA_CONV_FORM"] = "auto" if form == "dense" else form
            try:
                sess = ort.InferenceSession(dense if form == "dense" else sparse, session_options(),
                                            providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])
                times[form] = time_graph(sess, "float16", 0, 0, b, 1, x_shape=x_shape, y_shape=y_shape) / LAYERS * 1e6
                del sess
            except Exception as e:  # noqa: BLE001 - one failing form is reported, the rest still run
                print(f"  {form}: {str(e).splitlines()[0][:200]}", flush=True)
        m, k = b * ohw * ohw, spec["kernel"] ** 2 * c
        if args.gemm:  # the dense MatMul and MatMulCompress at this M, us per layer
            for _, dense_us, sparse_us in time_pair(
                    *gemm_models("float16", k, oc, rng), [m],
                    lambda sess, rows, gid: time_graph(sess, "float16", k, oc, rows, gid), f"gemm K={k} N={oc} M="):
                times.update({"gemm dense": dense_us, "gemm sparse": sparse_us})
        name = f"{spec['kernel']}x{spec['kernel']} s{spec['stride']} C={c} OC={oc} HW={hw}"
        count = counts.get(key(spec), 1)
        cells = " | ".join(f"{times[f]:.1f}" if f in times else "-" for f in forms + gemm_cols)
        best = min((times[f] for f in forms if f in times), default=float("nan"))
        dense_us = times.get("dense", float("nan"))
        gemm_ratio = f" {dense_us / times['gemm sparse']:.2f} |" if "gemm sparse" in times else (" - |" if args.gemm else "")
        print(f"| {name} | {count} | {m} | {k} | {oc} | {dense_us:.1f} | {cells} | {dense_us / best:.2f} |{gemm_ratio}",
              flush=True)
        rows.append((count, dense_us, best, times.get("gemm sparse", float("nan"))))
    if args.gemm and rows:
        summary(rows, time_e2e(resnet_model().SerializeToString(), [b, 3, 224, 224], graph=True)[0] * 1e3)
    return 0


def key(spec: dict) -> tuple:
    return spec["c"], spec["oc"], spec["kernel"], spec["stride"], spec["pad"], spec["hw"]


def spec_counts(model: onnx.ModelProto) -> dict:
    """How many convs of `model` have each distinct spec (conv_specs' fields)."""
    from models.bench_nets import every_conv_spec

    counts: dict = {}
    for spec in every_conv_spec(model):
        counts[key(spec)] = counts.get(key(spec), 0) + 1
    return counts


def summary(rows: list[tuple[int, float, float, float]], net_us: float) -> None:
    """The eligible convs' dense time, what the best measured form and the implicit-GEMM bound save
    on them (a conv kept dense where it does not gain), and the end-to-end ceilings they give."""
    dense = sum(n * d for n, d, _, _ in rows)
    saved_best = sum(n * max(0.0, d - b) for n, d, b, _ in rows if b == b)
    saved_gemm = sum(n * max(0.0, d - g) for n, d, _, g in rows if g == g)
    print(f"\ndense net (CUDA graph): {net_us:.1f} us; its eligible convs (each timed alone, x count): {dense:.1f} us")
    for what, saved in (("best measured form", saved_best), ("implicit-GEMM bound (the sparse GEMM alone)", saved_gemm)):
        print(f"{what}: saves {saved:.1f} us of the convs -> end to end at most {net_us / max(net_us - saved, 1e-9):.3f}x")


if __name__ == "__main__":
    sys.exit(main())
