"""What a compiled NHWC 1x1 conv (fp16, M = 64 pixels, K = 32, 16 outputs) returns for rows of its
input that hold +Inf and -Inf, on each CUDA path, with the NaN/Inf fix-up on and off.

    ONNXSPARSE_LIBRARY=... python3 benchmarks/cuda/probe_nonfinite_conv.py

The model is tests/test_nonfinite.py's infinities_at_kept_positions: weight rows 0-4 meet the
input's [+Inf, -Inf] at channels 0-1 as [1, 1] (dense: NaN), [0, 0, 2, 0] (NaN: 0 * Inf), [1, -1]
(+Inf), [-1, 1] (-Inf; 0 after a ReLU) and [3, 0, 0, 0] (NaN: a kept zero times -Inf). Prints
outputs 0-4 of the two such pixels and the dense values, for activation ReLU / none, fix-up on / off,
and cuSPARSELt (onnxsparse.cuda.small_m_max 32) or the own kernel (128). Needs a CUDA GPU and the
library built with CUDA.
"""
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from onnxsparse.session import session_options  # noqa: E402
from test_nonfinite import infinities_at_kept_positions  # noqa: E402

for activation in ("Relu", None):
    model, x, expected = infinities_at_kept_positions(activation)
    print(f"activation={activation or 'none':4} dense:                     "
          f"{expected[0, 0, 0, :5]} {expected[1, 2, 3, :5]}")
    for fixup in (True, False):
        for small_m_max in (32, 128):
            options = session_options(cuda_small_m_max=small_m_max, cuda_own_timed_m_max=0, cuda_nonfinite=fixup)
            options.log_severity_level = 3
            session = ort.InferenceSession(model.SerializeToString(), options, providers=["CUDAExecutionProvider"])
            y = session.run(None, {"X": x})[0]
            print(f"activation={activation or 'none':4} fix-up={'on ' if fixup else 'off'} "
                  f"small_m_max={small_m_max:3}: {y[0, 0, 0, :5]} {y[1, 2, 3, :5]}")
