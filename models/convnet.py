"""A small CNN classifier whose eligible Conv and Gemm weights are 2:4 along the input channels.

Input ``image`` float ``[batch, 3, 32, 32]`` (batch dynamic); output ``logits`` ``[batch, classes]``.

==========  =========================================  ======  ===========================
node        Conv                                       C/group 2:4
==========  =========================================  ======  ===========================
stem        3x3, 3 -> 16, pads 1, bias                 3       no: C=3 not a multiple of 4
down        3x3, 16 -> 32, stride 2, pads 1, + BatchNormalization  16  yes
pointwise   1x1, 32 -> 32, no bias                     32      yes
grouped     3x3, 32 -> 32, group 2, pads 1             16      yes
depthwise   3x3, 32 -> 32, group 32, pads 1            1       no: C/group=1 (dense weight)
same        3x3, 32 -> 64, stride 2, auto_pad SAME_UPPER  32   yes
dilated     3x3, 64 -> 64, dilations 2, pads 2         64      yes
==========  =========================================  ======  ===========================

each followed by Relu, then GlobalAveragePool, Flatten and ``Gemm(x, W[classes, 64], b, transB=1)``
(2:4 along K=64). The pruning groups 4 consecutive input channels at each (oc, kh, kw), SPEC's axis.
"""

from __future__ import annotations

import onnx
from onnx import helper

from ._common import Weights, make_model, onnx_dtype

# (name, in, out, kernel, attributes, bias); group comes from the attributes.
LAYERS = [
    ("stem", 3, 16, 3, {"pads": [1, 1, 1, 1]}, True),
    ("down", 16, 32, 3, {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True),
    ("pointwise", 32, 32, 1, {}, False),
    ("grouped", 32, 32, 3, {"pads": [1, 1, 1, 1], "group": 2}, True),
    ("depthwise", 32, 32, 3, {"pads": [1, 1, 1, 1], "group": 32}, True),
    ("same", 32, 64, 3, {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, True),
    ("dilated", 64, 64, 3, {"dilations": [2, 2], "pads": [2, 2, 2, 2]}, True),
]
BATCHNORM_AFTER = "down"


def build_convnet(dtype: str = "float32", seed: int = 0, classes: int = 10, image_size: int = 32) -> onnx.ModelProto:
    """The CNN above; weights whose C/group is a multiple of 4 are magnitude-pruned to 2:4."""
    w = Weights(seed, dtype)
    nodes: list[onnx.NodeProto] = []

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [name + ".out"], name=name, **attrs))
        return name + ".out"

    x = "image"
    for name, c_in, c_out, kernel, attrs, has_bias in LAYERS:
        group = attrs.get("group", 1)
        shape = (c_out, c_in // group, kernel, kernel)
        fan_in = shape[1] * kernel * kernel
        if shape[1] % 4 == 0:
            weight = w.sparse(f"{name}.weight", shape, "oihw", fan_in)
        else:
            weight = w.dense(f"{name}.weight", shape, fan_in)
        inputs = [x, weight] + ([w.vector(f"{name}.bias", c_out)] if has_bias else [])
        x = node("Conv", inputs, f"{name}/Conv", kernel_shape=[kernel, kernel], **attrs)
        if name == BATCHNORM_AFTER:
            bn = [
                w.vector(f"{name}.bn.weight", c_out, offset=1.0),
                w.vector(f"{name}.bn.bias", c_out),
                w.vector(f"{name}.bn.running_mean", c_out),
                w.add(f"{name}.bn.running_var", 1.0 + 0.1 * w.rng.random(c_out)),
            ]
            x = node("BatchNormalization", [x, *bn], f"{name}/BatchNormalization", epsilon=1e-5)
        x = node("Relu", [x], f"{name}/Relu")

    x = node("Flatten", [node("GlobalAveragePool", [x], "pool/GlobalAveragePool")], "pool/Flatten", axis=1)
    features = LAYERS[-1][2]
    fc_weight = w.sparse("fc.weight", (classes, features), "nk", features)
    fc_bias = w.vector("fc.bias", classes)
    nodes.append(helper.make_node("Gemm", [x, fc_weight, fc_bias], ["logits"], name="fc/Gemm", transB=1))

    elem = onnx_dtype(dtype)
    return make_model(
        "convnet",
        nodes,
        [helper.make_tensor_value_info("image", elem, ["batch", 3, image_size, image_size])],
        [helper.make_tensor_value_info("logits", elem, ["batch", classes])],
        w,
        __doc__.strip().splitlines()[0],
    )
