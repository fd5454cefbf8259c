"""What a compiled NHWC 1x1 conv (fp16, M = 64 pixels, K = 32, 16 outputs) returns for rows of its
input that hold +Inf and -Inf, on each CUDA path, with the NaN/Inf fix-up on and off.

    ONNXSPARSE_LIBRARY=... python3 benchmarks/cuda/probe_nonfinite_conv.py

Weight rows 0-3 meet the input's [+Inf, -Inf] at channels 0-1 as [1, 1] (dense: NaN), [0, 0, 2, 0]
(NaN: 0 * Inf), [1, -1] (+Inf) and [-1, 1] (-Inf; 0 after a ReLU). Prints outputs 0-3 of the two
such rows for activation ReLU / none, fix-up on / off, and cuSPARSELt (onnxsparse.cuda.small_m_max
32) or the own kernel (128). Needs a CUDA GPU and the library built with CUDA.
"""
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from onnxsparse import format as fmt  # noqa: E402
from onnxsparse.session import session_options  # noqa: E402

n, h, w, c, oc = 4, 4, 4, 32, 16
rng = np.random.default_rng(5)
weight = fmt.prune_weight_magnitude(rng.standard_normal((oc, c, 1, 1)).astype(np.float32), "oihw")
weight[:4, :, 0, 0] = 0.0
weight[0, :2, 0, 0] = [1.0, 1.0]
weight[1, 2, 0, 0] = 2.0
weight[2, :2, 0, 0] = [1.0, -1.0]
weight[3, :2, 0, 0] = [-1.0, 1.0]
weight = weight.astype(np.float16)
values, index = fmt.compress_weight(weight, "oihw")
x = rng.standard_normal((n, h, w, c)).astype(np.float16)
x[0, 0, 0, :2] = [np.inf, -np.inf]
x[1, 2, 3, :2] = [np.inf, -np.inf]
bias = rng.standard_normal(oc).astype(np.float16)
for activation in ("Relu", None):
    attributes = {"activation": activation} if activation else {}
    node = oh.make_node("Conv2dCompress", ["X", "values", "index", "B"], ["Y"], domain="onnxsparse",
                        kernel_shape=[1, 1], layout="NHWC", **attributes)
    graph = oh.make_graph([node], "g", [oh.make_tensor_value_info("X", onnx.TensorProto.FLOAT16, [n, h, w, c])],
                          [oh.make_tensor_value_info("Y", onnx.TensorProto.FLOAT16, [n, h, w, oc])],
                          initializer=[onnx.numpy_helper.from_array(values, "values"),
                                       onnx.numpy_helper.from_array(index, "index"),
                                       onnx.numpy_helper.from_array(bias, "B")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("onnxsparse", 1)])
    model.ir_version = 10
    for fixup in (True, False):
        for small_m_max in (32, 128):
            options = session_options(cuda_small_m_max=small_m_max, cuda_own_timed_m_max=0, cuda_nonfinite=fixup)
            options.log_severity_level = 3
            session = ort.InferenceSession(model.SerializeToString(), options, providers=["CUDAExecutionProvider"])
            y = session.run(None, {"X": x})[0]
            print(f"activation={activation or 'none':4} fix-up={'on ' if fixup else 'off'} "
                  f"small_m_max={small_m_max:3}: {y[0, 0, 0, :4]} {y[1, 2, 3, :4]}")
