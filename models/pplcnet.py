"""A PP-LCNet-style classifier (PaddleClas' PP-LCNet x1.0) built directly in ONNX, its pointwise
convolutions 2:4 along C.

As Paddle2ONNX writes it with BatchNorm folded: a 3x3 stride-2 stem conv (16 channels), then 13
depthwise-separable blocks, each a depthwise conv (3x3 or 5x5, group = C) and a pointwise 1x1 conv,
every conv followed by ``HardSwish``; channels 32, 64, 64, 128, 128, 256 x 6, 512, 512 (stride 2 at
the first block of each width); global average pool, a 1x1 conv to 1280 with HardSwish, ``Flatten``
and ``Gemm(transB=1)`` to 1000 classes. The squeeze-excitation of the last two blocks is left out.
The pointwise convs, the 1280 head conv and the classifier are magnitude-pruned to 2:4 (the
depthwise convs have C/group = 1 and are never eligible). ``--hardswish mul`` writes each HardSwish
as ``x * HardSigmoid(x)`` (alpha 1/6, beta 0.5), as some exporters do. Input ``image``
``[batch, 3, 224, 224]`` (batch symbolic). Random weights (speed, not accuracy).

    python -m models.pplcnet OUT.onnx [--dtype float16] [--hardswish op|mul]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "models"  # noqa: A001

import onnx  # noqa: E402
from onnx import helper  # noqa: E402

from ._common import Weights, classifier_head, global_average_pool, make_model, onnx_dtype  # noqa: E402

# (kernel, out channels, stride) of the depthwise-separable blocks of PP-LCNet x1.0.
BLOCKS = ((3, 32, 1), (3, 64, 2), (3, 64, 1), (3, 128, 2), (3, 128, 1), (3, 256, 2), (5, 256, 1), (5, 256, 1),
          (5, 256, 1), (5, 256, 1), (5, 256, 1), (5, 512, 2), (5, 512, 1))


def build_pplcnet(dtype: str = "float32", seed: int = 0, classes: int = 1000, hardswish: str = "op") -> onnx.ModelProto:
    if hardswish not in ("op", "mul"):
        raise ValueError(f"hardswish must be 'op' or 'mul', got {hardswish!r}")
    w = Weights(seed, dtype)
    nodes: list[onnx.NodeProto] = []

    def act(x: str, name: str) -> str:
        if hardswish == "op":
            nodes.append(helper.make_node("HardSwish", [x], [f"{name}.hs"], name=f"{name}/HardSwish"))
        else:
            nodes.append(helper.make_node("HardSigmoid", [x], [f"{name}.hsig"], name=f"{name}/HardSigmoid",
                                          alpha=1.0 / 6.0, beta=0.5))
            nodes.append(helper.make_node("Mul", [x, f"{name}.hsig"], [f"{name}.hs"], name=f"{name}/Mul"))
        return f"{name}.hs"

    def conv(x: str, name: str, c: int, oc: int, k: int, stride: int = 1, group: int = 1) -> str:
        cg = c // group
        shape = (oc, cg, k, k)
        weight = w.sparse(f"{name}.weight", shape, "oihw", cg * k * k) if cg % 4 == 0 else \
            w.dense(f"{name}.weight", shape, cg * k * k)
        bias = w.vector(f"{name}.bias", oc)
        nodes.append(helper.make_node("Conv", [x, weight, bias], [f"{name}.out"], name=f"{name}/Conv",
                                      kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=group))
        return act(f"{name}.out", name)

    x, c = conv("image", "conv1", 3, 16, 3, 2), 16
    for i, (k, oc, stride) in enumerate(BLOCKS, 2):
        x = conv(x, f"blocks{i}.dw", c, c, k, stride, group=c)
        x, c = conv(x, f"blocks{i}.pw", c, oc, 1), oc
    x = conv(global_average_pool(nodes, x), "last_conv", c, 1280, 1)
    classifier_head(nodes, w, x, 1280, classes)
    elem = onnx_dtype(dtype)
    return make_model("pplcnet", nodes, [helper.make_tensor_value_info("image", elem, ["batch", 3, 224, 224])],
                      [helper.make_tensor_value_info("logits", elem, ["batch", classes])], w,
                      __doc__.strip().splitlines()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    parser.add_argument("--hardswish", default="op", choices=("op", "mul"))
    args = parser.parse_args(argv)
    from onnxsparse.io import save_model

    save_model(build_pplcnet(args.dtype, hardswish=args.hardswish), args.output, external_data=False)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
