"""A language-model-sized chain of 2:4-sparse MatMuls, written tensor by tensor: models over 2 GB.

``python -m models.big_model OUT.onnx [--layers 16] [--hidden 4096] [--ffn 11008] [--dtype float32]``

Input ``x`` ``[batch, hidden]``; ``layers`` MatMuls alternate ``W[hidden, ffn]`` (followed by a Relu)
and ``W[ffn, hidden]`` (an MLP block of a transformer, without the rest), output ``y``. Each weight
is 2:4 along K (SPEC's axis for MatMul: 4 consecutive rows of W), the two kept elements of each
group in one of the six possible positions (rotating with the group and the column, so every
pattern of the encoding appears), drawn from a seeded uniform distribution scaled to keep
activations near unit size. The defaults (16 layers of 4096 x 11008) make 2.9 GB of fp32 weights, the largest 180 MB; the
fp16 model of 5.8 GB is ``--layers 64 --dtype float16``.

The weights go straight to ``OUT.onnx.data`` (64-byte aligned), a block of rows at a time: the
generator holds about 64 MB whatever the model's size, and never builds the model in memory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "models"  # noqa: A001

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import helper  # noqa: E402

from ._common import IR_VERSION, OPSET, PRODUCER, onnx_dtype  # noqa: E402

ALIGN = 64
BLOCK_ELEMENTS = 4 << 20  # elements of W generated at a time (16 MB of fp32)
# The six ways to keep 2 of the 4 elements of a group.
PAIRS = np.array([(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)])


def weight_shapes(layers: int, hidden: int, ffn: int) -> list[tuple[int, int]]:
    """``W[K, N]`` of each MatMul: up projections ``[hidden, ffn]``, down ``[ffn, hidden]``."""
    return [(hidden, ffn) if i % 2 == 0 else (ffn, hidden) for i in range(layers)]


def model_bytes(layers: int = 16, hidden: int = 4096, ffn: int = 11008, dtype: str = "float32") -> int:
    """The bytes of weights the model will hold."""
    return sum(k * n for k, n in weight_shapes(layers, hidden, ffn)) * np.dtype(dtype).itemsize


def _write_weight(data, shape: tuple[int, int], dtype: np.dtype, rng: np.random.Generator, scale: float) -> None:
    """W[K, N], 2:4 down each column, written row-major a block of 4-row groups at a time. The
    kept pair of group g in column c is ``PAIRS[(g + c) % 6]``; values uniform in +-scale*sqrt(3)
    (standard deviation ``scale``), never zero."""
    k, n = shape
    groups_per_block = max(1, BLOCK_ELEMENTS // (4 * n))
    residue = ((np.arange(len(PAIRS))[:, None] + np.arange(n)[None, :]) % len(PAIRS)).astype(np.uint8)
    takes_first = [PAIRS[:, 0] == j for j in range(4)]  # per pattern: element j holds the first kept value
    takes_second = [PAIRS[:, 1] == j for j in range(4)]
    half_width = np.float32(scale * np.sqrt(3.0))
    floor = dtype.type(scale)
    for first in range(0, k // 4, groups_per_block):
        count = min(groups_per_block, k // 4 - first)
        pattern = residue[(first + np.arange(count)) % len(PAIRS)]  # [count, n]
        kept = ((rng.random((2, count, n), dtype=np.float32) - np.float32(0.5)) * (2 * half_width)).astype(dtype)
        kept[kept == 0] = floor
        block = np.zeros((count, 4, n), dtype=dtype)
        for j in range(4):
            block[:, j, :] = np.where(takes_first[j][pattern], kept[0],
                                      np.where(takes_second[j][pattern], kept[1], dtype.type(0)))
        data.write(memoryview(block.reshape(-1).view(np.uint8)))


def write_big_model(path: str | Path, layers: int = 16, hidden: int = 4096, ffn: int = 11008,
                    dtype: str = "float32", seed: int = 0) -> list[Path]:
    """Write the model to ``path`` and its weights to ``<path name>.data``; return both paths."""
    if hidden % 4 or ffn % 4 or layers < 1:
        raise ValueError("hidden and ffn must be multiples of 4, layers at least 1")
    path = Path(path)
    elem = onnx_dtype(dtype)
    np_type = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    data_path = path.with_name(path.name + ".data")
    initializers, nodes = [], []
    offset = 0
    x = "x"
    with open(data_path, "wb") as data:
        for index, (k, n) in enumerate(weight_shapes(layers, hidden, ffn)):
            relu = index % 2 == 0 and index < layers - 1
            pad = (-offset) % ALIGN
            data.write(b"\0" * pad)
            offset += pad
            # Half of each group is kept: scale by sqrt(2/K) to keep the product's size, twice
            # that before a Relu (which drops half of it).
            _write_weight(data, (k, n), np_type, rng, float(np.sqrt((4.0 if relu else 2.0) / k)))
            name = f"layers.{index}.weight"
            tensor = onnx.TensorProto(name=name, data_type=elem, dims=[k, n])
            length = k * n * np_type.itemsize
            for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.data_location = onnx.TensorProto.EXTERNAL
            initializers.append(tensor)
            offset += length
            out = "y" if index == layers - 1 else f"layers.{index}.out"
            nodes.append(helper.make_node("MatMul", [x, name], [out], name=f"layers.{index}/MatMul"))
            x = out
            if relu:
                x = f"layers.{index}.relu"
                nodes.append(helper.make_node("Relu", [out], [x], name=f"layers.{index}/Relu"))
    width = hidden if layers % 2 == 0 else ffn
    graph = helper.make_graph(
        nodes, "big_mlp",
        [helper.make_tensor_value_info("x", elem, ["batch", hidden])],
        [helper.make_tensor_value_info("y", elem, ["batch", width])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER)
    model.ir_version = IR_VERSION
    model.doc_string = __doc__.strip().splitlines()[0]
    path.write_bytes(model.SerializeToString())  # the graph only: the weights are in the data file
    return [path, data_path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("output", help="the model file to write (its weights go to <output>.data)")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--ffn", type=int, default=11008)
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    written = write_big_model(args.output, args.layers, args.hidden, args.ffn, args.dtype, args.seed)
    size = sum(p.stat().st_size for p in written)
    print(f"wrote {written[0]} and {written[1].name}: {size / 1e9:.2f} GB in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
