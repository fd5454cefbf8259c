"""``onnxsparse verify ORIGINAL COMPILED``: the compiled model's outputs against the original's."""

from __future__ import annotations

import argparse
import json

from .. import io
from ..verify import to_dict, verify
from ._model_pair import add_model_pair_arguments

NAME = "verify"
HELP = "run a compiled model and its original on the same inputs and compare every output"
ORDER = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_pair_arguments(parser)
    parser.add_argument("--samples", type=int, default=4, help="random samples when --inputs is not given (default 4)")
    parser.add_argument("--rtol", type=float, help="relative L2 error allowed per output (default: by dtype)")


def run(args: argparse.Namespace) -> int:
    original = io.load_model(args.original)
    compiled = io.load_model(args.compiled)
    checks = verify(original, compiled, args.inputs, args.samples, args.batch_size, args.rtol, args.provider)
    passed = all(c.passed for c in checks)
    if args.json:
        print(json.dumps(to_dict(checks), indent=2))
        return 0 if passed else 1
    print(f"{'output':24} {'dtype':9} {'max |diff|':>11} {'rel L2':>10} {'cosine':>10} {'tolerance':>10}  result")
    for c in checks:
        print(
            f"{c.name:24} {c.dtype:9} {c.max_abs:11.3g} {c.rel_l2:10.3g} {c.cosine:10.7f} {c.tolerance:10.3g}  "
            f"{'ok' if c.passed else 'MISMATCH'}"
        )
    print("verified: outputs match" if passed else "verify FAILED: outputs differ beyond tolerance")
    return 0 if passed else 1
