"""How long a compiled model takes to start on CUDA: session creation, the first run (where the op
makes its cuSPARSELt plans and, without a tuned entry, chooses by the shipped table or the default),
the second run, and the median of the next ten, in one fresh process.

    python3 benchmarks/cuda/first_run.py MODEL.onnx X=32x3x224x224:half [--cache FILE]

The feed is kernel_profile.py's (NAME=DxD..:float|half|int[:HIGH]).

--cache: the cuSPARSELt tuning cache to read (ONNXSPARSE_CUSPARSELT_CACHE); a path that does not exist
gives the no-cache case. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from kernel_profile import parse_feed  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("feed", help="NAME=DxD...:float|half|int[:HIGH]")
    parser.add_argument("--cache", help="the cuSPARSELt tuning cache file (default: the user's)")
    args = parser.parse_args(argv)
    if args.cache:
        os.environ["ONNXSPARSE_CUSPARSELT_CACHE"] = args.cache  # read when the session is made
    from onnxsparse.session import session_options

    name, x = parse_feed(args.feed, np.random.default_rng(0))
    t0 = time.perf_counter()
    sess = ort.InferenceSession(args.model, session_options(), providers=["CUDAExecutionProvider"])
    created = time.perf_counter() - t0
    times = []
    for _ in range(12):
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t)
    print(json.dumps({"model": args.model, "cache": os.environ.get("ONNXSPARSE_CUSPARSELT_CACHE", "(default)"),
                      "cache_exists": Path(os.environ["ONNXSPARSE_CUSPARSELT_CACHE"]).is_file()
                      if "ONNXSPARSE_CUSPARSELT_CACHE" in os.environ else None,
                      "session_s": round(created, 3), "first_run_s": round(times[0], 3),
                      "second_run_s": round(times[1], 4), "steady_run_s": round(statistics.median(times[2:]), 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
