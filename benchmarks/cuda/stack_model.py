"""A stack of fp16 linear layers (MatMul by a 2:4-pruned weight, then its bias Add), alternating
KxN and NxK, compiled by onnxsparse: how a model with many layers of a few shapes starts
(benchmarks/cuda/first_run.py), without exporting a transformer.

    python3 benchmarks/cuda/stack_model.py OUT_DIR --layers 48 --k 1024 --n 4096

Writes OUT_DIR/stack.onnx (dense) and OUT_DIR/stack.sparse.onnx (compiled, every layer).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from onnxsparse.api import compile_model  # noqa: E402
from onnxsparse.format import prune_weight_magnitude  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=48)
    parser.add_argument("--k", type=int, default=1024)
    parser.add_argument("--n", type=int, default=4096)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "X"
    for i in range(args.layers):
        k, n = (args.k, args.n) if i % 2 == 0 else (args.n, args.k)
        w = prune_weight_magnitude((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float16), "kn")
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array((0.01 * rng.standard_normal(n)).astype(np.float16), f"b{i}")]
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"p{i}"], name=f"fc{i}"),
                  helper.make_node("Add", [f"p{i}", f"b{i}"], [f"y{i}"], name=f"bias{i}")]
        prev = f"y{i}"
    nodes.append(helper.make_node("Identity", [prev], ["Y"]))
    last = args.k if args.layers % 2 == 0 else args.n
    graph = helper.make_graph(nodes, "stack", [helper.make_tensor_value_info("X", TensorProto.FLOAT16, ["M", args.k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT16, ["M", last])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    args.out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, args.out / "stack.onnx")
    onnx.save(compile_model(model).model, args.out / "stack.sparse.onnx")
    print(f"wrote {args.out / 'stack.onnx'} and stack.sparse.onnx ({args.layers} layers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
