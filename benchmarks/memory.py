"""Session memory, dense against compiled: the resident set of a process holding one session.

    python benchmarks/memory.py [--layers 4] [--size 2048] [--dtype float32] [--threads 1] [--json OUT]

Builds a chain of ``--layers`` MatMuls of ``size x size`` 2:4 weights (``--model PATH`` measures a
model of yours instead: compiled here), compiles it, and saves both with embedded weights and with
external data. Each session is created and run once in a fresh subprocess (``python -c``): the
figure is that process's VmRSS after the run minus its VmRSS after importing ONNX Runtime and
numpy (so that the interpreter and the libraries drop out), and VmHWM (the peak, packing included)
likewise. ONNX Runtime memory-maps initializers kept in an external data file; the CPU kernels then
drop the mapped pages of the compressed pair once they have packed it (cpu/release_pages.h), so
the packed copy is the only one resident. Embedded weights are copied into ONNX Runtime's heap,
where nothing can be released: there compiled is 17.5 / 16 of dense (fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

_CHILD = r"""
import json, os, sys
import numpy as np
import onnxruntime as ort
def status():
    fields = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields
path, library, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
options = ort.SessionOptions()
options.intra_op_num_threads = threads
if library:
    options.register_custom_ops_library(library)
before = status()
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
feeds = {}
for value in session.get_inputs():
    shape = [d if isinstance(d, int) else 1 for d in value.shape]
    dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16}[value.type]
    feeds[value.name] = np.random.default_rng(0).standard_normal(shape).astype(dtype)
session.run(None, feeds)
after = status()
print(json.dumps({"rss": after["VmRSS"] - before["VmRSS"], "hwm": after["VmHWM"] - before["VmRSS"]}))
"""


def session_memory(path: str | os.PathLike, library: str = "", threads: int = 1) -> dict:
    """{'rss': bytes, 'hwm': bytes} of a fresh process that creates and runs one session."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), library, str(threads)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def chain_model(layers: int = 4, size: int = 2048, dtype: str = "float32", seed: int = 0):
    """``layers`` MatMuls of ``size x size`` 2:4 weights in a chain, input [1, size]."""
    import numpy as np
    import onnx
    from onnx import helper

    from onnxsparse.format import prune_weight_magnitude

    rng = np.random.default_rng(seed)
    np_dtype = np.dtype(dtype)
    inits, nodes, x = [], [], "x"
    for i in range(layers):
        w = prune_weight_magnitude((rng.standard_normal((size, size)) / np.sqrt(size)).astype(np_dtype), "kn")
        inits.append(onnx.numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"y{i}"], name=f"layer{i}"))
        x = f"y{i}"
    elem = helper.np_dtype_to_tensor_dtype(np_dtype)
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", elem, [1, size])],
                              [helper.make_tensor_value_info(x, elem, [1, size])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def measure(model, folder: str | os.PathLike, library: str, threads: int = 1, external: tuple = (False, True)) -> dict:
    """Session memory of the model dense and compiled, weights embedded and external."""
    from onnxsparse.api import compile_model
    from onnxsparse.io import save_model

    compiled = compile_model(model).model
    result = {}
    for ext in external:
        kind = "external" if ext else "embedded"
        for name, m, lib in (("dense", model, ""), ("compiled", compiled, library)):
            path = Path(folder) / f"{name}_{kind}.onnx"
            save_model(m, path, external_data=ext)
            result[f"{name} {kind}"] = session_memory(path, lib, threads)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an ONNX model (default: the MatMul chain)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    from onnxsparse import get_library_path
    from onnxsparse.io import load_model

    model = load_model(args.model) if args.model else chain_model(args.layers, args.size, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(model, tmp, get_library_path(), args.threads)
    mib = 1 << 20
    print("| session | RSS MiB | peak MiB | RSS / dense |")
    print("|---|---|---|---|")
    for key, value in result.items():
        dense = result[key.replace("compiled", "dense")]["rss"]
        print(f"| {key} | {value['rss'] / mib:.1f} | {value['hwm'] / mib:.1f} | {value['rss'] / dense:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
