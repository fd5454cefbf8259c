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
    args = ap.parse_args()
    import onnxruntime as ort

    from gpu_bench import LAYERS, time_graph
    from models.bench_nets import conv_specs, resnet_model
    from onnxsparse.session import session_options

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print("conv_forms: onnxruntime has no CUDAExecutionProvider", file=sys.stderr)
        return 2
    os.environ["ONNXSPARSE_CUSPARSELT_TUNE"] = "search"
    os.environ.setdefault("ONNXSPARSE_CUSPARSELT_CACHE", str(Path(tempfile.mkdtemp()) / "cusparselt_tuning.txt"))
    forms = [f for f in args.forms.split(",") if f]
    b = args.batch
    print(f"batch {b}, {'bias + Relu' if args.relu else 'bias'}, us per layer (CUDA-graph replay, {LAYERS} layers)")
    print("| conv | M=B*OH*OW | K | N | dense | " + " | ".join(forms) + " | best x |")
    print("|---|---|---|---|---|" + "---|" * len(forms) + "---|")
    deadline = time.time() + args.minutes * 60
    rng = np.random.default_rng(3)
    for spec in conv_specs(resnet_model()):
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
        name = f"{spec['kernel']}x{spec['kernel']} s{spec['stride']} C={c} OC={oc} HW={hw}"
        cells = " | ".join(f"{times[f]:.1f}" if f in times else "-" for f in forms)
        best = min((times[f] for f in forms if f in times), default=float("nan"))
        ratio = times.get("dense", float("nan")) / best
        print(f"| {name} | {b * ohw * ohw} | {spec['kernel'] ** 2 * c} | {oc} | {times.get('dense', float('nan')):.1f} | "
              f"{cells} | {ratio:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
