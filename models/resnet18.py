"""A torchvision-style ResNet-18 built directly in ONNX, its convolutions 2:4 along C.

As ``torch.onnx.export`` writes torchvision's ``resnet18`` in eval mode with constant folding:
BatchNorm folded into each Conv's weight and bias, ``Conv -> Relu``, a 3x3 max pool after the 7x7
stem, four stages of two BasicBlocks (64, 128, 256, 512 channels; the first block of stages 2-4
strides 2 and has a 1x1 strided downsample conv), ``Add -> Relu`` at each block's end, global
average pool, ``Flatten`` and ``Gemm(transB=1)`` to 1000 classes. Every conv whose C is a multiple
of 4 (all but the 3-channel stem) is magnitude-pruned to 2:4; the classifier too. Input ``image``
``[batch, 3, 224, 224]`` (batch symbolic). He-initialised random weights (speed, not accuracy).

    python -m models.resnet18 OUT.onnx [--dtype float16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "models"  # noqa: A001

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import helper  # noqa: E402

from ._common import Weights, classifier_head, global_average_pool, make_model, onnx_dtype  # noqa: E402

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))


def build_resnet18(dtype: str = "float32", seed: int = 0, classes: int = 1000) -> onnx.ModelProto:
    w = Weights(seed, dtype)
    nodes: list[onnx.NodeProto] = []

    def conv(x: str, name: str, c: int, oc: int, k: int, stride: int = 1, relu: bool = True) -> str:
        shape = (oc, c, k, k)
        weight = w.sparse(f"{name}.weight", shape, "oihw", c * k * k) if c % 4 == 0 else \
            w.dense(f"{name}.weight", shape, c * k * k)
        bias = w.vector(f"{name}.bias", oc)
        nodes.append(helper.make_node("Conv", [x, weight, bias], [f"{name}.out"], name=f"{name}/Conv",
                                      kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4))
        if not relu:
            return f"{name}.out"
        nodes.append(helper.make_node("Relu", [f"{name}.out"], [f"{name}.relu"], name=f"{name}/Relu"))
        return f"{name}.relu"

    x = conv("image", "conv1", 3, 64, 7, 2)
    nodes.append(helper.make_node("MaxPool", [x], ["maxpool.out"], name="maxpool/MaxPool", kernel_shape=[3, 3],
                                  strides=[2, 2], pads=[1, 1, 1, 1]))
    x, c = "maxpool.out", 64
    for stage, (width, first_stride) in enumerate(STAGES, 1):
        for block in range(2):
            p = f"layer{stage}.{block}"
            stride = first_stride if block == 0 else 1
            h = conv(x, f"{p}.conv1", c, width, 3, stride)
            h = conv(h, f"{p}.conv2", width, width, 3, 1, relu=False)
            shortcut = x
            if stride != 1 or c != width:
                shortcut = conv(x, f"{p}.downsample", c, width, 1, stride, relu=False)
            nodes.append(helper.make_node("Add", [h, shortcut], [f"{p}.add"], name=f"{p}/Add"))
            nodes.append(helper.make_node("Relu", [f"{p}.add"], [f"{p}.out"], name=f"{p}/Relu"))
            x, c = f"{p}.out", width
    classifier_head(nodes, w, global_average_pool(nodes, x), 512, classes)
    elem = onnx_dtype(dtype)
    return make_model("resnet18", nodes, [helper.make_tensor_value_info("image", elem, ["batch", 3, 224, 224])],
                      [helper.make_tensor_value_info("logits", elem, ["batch", classes])], w,
                      __doc__.strip().splitlines()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    args = parser.parse_args(argv)
    from onnxsparse.io import save_model

    save_model(build_resnet18(args.dtype), args.output, external_data=False)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
