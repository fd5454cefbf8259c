"""Measures a shipped cuSPARSELt tuning table on this GPU (onnxsparse/cusparselt_table.py).

    python benchmarks/cuda/ship_cusparselt_table.py [--out DIR] [--shapes KxN[+b],...] [--ms 16,128,...]
                                                    [--dtypes float16,bfloat16] [--minutes 8]

For each problem (dtype, K x N weight, with or without a bias, M rows) it compiles a one-layer
MatMul(+Add) model with onnxsparse and runs it once on the CUDA EP with onnxsparse.cusparselt.tune=
search and a fresh cache file, so the kernels search every safe cuSPARSELt configuration and time
their own kernel, as `onnxsparse tune --provider cuda` would on a user's machine; then writes the
cache as a table (one JSON per GPU name, compute capability and cuSPARSELt version) into --out
(default onnxsparse/data/cusparselt/). Problems: the LLM-style hidden shapes of issue 14, the
shapes of benchmarks/gpu_bench.py, BERT-large's (with bias) and Llama-7B's layers; M from decode
sizes to prefill. Stops starting problems after --minutes and writes what it has.
"""

from __future__ import annotations

import argparse
import json
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

# K x N, "+b": with a bias (BERT's Linear layers keep theirs; Llama's have none)
SHAPES = ("5120x13824,13824x5120,3584x18944,2560x10240,8192x8192,1536x6144,"
          "4096x4096,4096x11008,11008x4096,1024x1024+b,1024x4096+b,4096x1024+b")
MS = "16,32,64,128,256,384,1024,2048,3072,4096,12288"


def layer_model(k: int, n: int, bias: bool, dtype: str) -> onnx.ModelProto:
    """X [M, K] @ W [K, N] (+ B), W 2:4 along K, compiled by onnxsparse (its MatMulCompress)."""
    from onnxsparse import format as fmt
    from onnxsparse.api import compile_model

    if dtype != "float16":
        raise ValueError(f"dtype {dtype}: only float16 layers are built here")
    elem = onnx.TensorProto.FLOAT16
    rng = np.random.default_rng(k * 7 + n)
    w = fmt.prune_weight_magnitude((rng.standard_normal((k, n)) * 0.05).astype(np.float32), "kn")
    inits = [onnx.numpy_helper.from_array(w.astype(np.float16), "W")]
    nodes = [oh.make_node("MatMul", ["X", "W"], ["P" if bias else "Y"])]
    if bias:
        inits.append(onnx.numpy_helper.from_array((rng.standard_normal(n) * 0.1).astype(np.float16), "B"))
        nodes.append(oh.make_node("Add", ["P", "B"], ["Y"]))
    graph = oh.make_graph(nodes, "layer", [oh.make_tensor_value_info("X", elem, ["M", k])],
                          [oh.make_tensor_value_info("Y", elem, ["M", n])], initializer=inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 10
    return compile_model(model).model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "onnxsparse" / "data" / "cusparselt")
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--ms", default=MS)
    ap.add_argument("--dtypes", default="float16", help="float16 (the only one built here)")
    ap.add_argument("--minutes", type=float, default=8.0)
    args = ap.parse_args()
    import onnxruntime as ort

    from onnxsparse.cusparselt_table import table_name, tables_from_cache
    from onnxsparse.session import session_options

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print("ship_cusparselt_table: onnxruntime has no CUDAExecutionProvider", file=sys.stderr)
        return 2
    cache = Path(tempfile.mkdtemp(prefix="cslt-table-")) / "cusparselt_tuning.txt"
    opts = session_options(cusparselt_tune="search", cusparselt_cache=str(cache))
    ms = [int(m) for m in args.ms.split(",")]
    deadline = time.time() + args.minutes * 60
    done = 0
    for dtype in args.dtypes.split(","):
        for shape in args.shapes.split(","):
            bias = shape.endswith("+b")
            k, n = (int(v) for v in shape.removesuffix("+b").lower().split("x"))
            sess = ort.InferenceSession(layer_model(k, n, bias, dtype).SerializeToString(), opts,
                                        providers=["CUDAExecutionProvider"])
            for m in ms:
                if time.time() > deadline:
                    break
                x = ort.OrtValue.ortvalue_from_shape_and_type([m, k], np.float16, "cuda", 0)
                b = sess.io_binding()
                b.bind_ortvalue_input("X", x)
                b.bind_output("Y", "cuda")
                t0 = time.time()
                sess.run_with_iobinding(b)  # the first call of an M searches and writes the cache
                done += 1
                print(f"{dtype} K={k} N={n}{' bias' if bias else ''} M={m}: {time.time() - t0:.1f} s", flush=True)
            del sess
    measured = {"onnxruntime": ort.__version__, "problems": done, "date": time.strftime("%Y-%m-%d"),
                "command": "benchmarks/cuda/ship_cusparselt_table.py " + " ".join(sys.argv[1:])}
    tables = tables_from_cache(cache.read_text() if cache.is_file() else "", measured)
    args.out.mkdir(parents=True, exist_ok=True)
    for table in tables:
        path = args.out / table_name(table["gpu"], table["sm"], table["cusparselt"])
        path.write_text(json.dumps(table, indent=0) + "\n")
        print(f"wrote {path}: {len(table['entries'])} entries", flush=True)
    if not tables:
        print("ship_cusparselt_table: the search wrote no entry (is cuSPARSELt loaded? "
              "ONNXSPARSE_CUSPARSELT_LIBRARY)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
