"""``onnxsparse verify ORIGINAL COMPILED``: the compiled model's outputs against the original's.

Every output passes when each element is within ``atol + rtol * |original|`` (``numpy.allclose``'s
rule, as polygraphy's); the defaults follow the model's compute dtype (``onnxsparse.verify``).
"""

from __future__ import annotations

import argparse
import json

from ..verify import TOLERANCES, to_dict, verify
from ._model_pair import add_model_pair_arguments, input_options, open_pair

NAME = "verify"
HELP = "run a compiled model and its original on the same inputs and compare every output"
ORDER = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_pair_arguments(parser)
    parser.add_argument("--samples", type=int, default=4, help="random samples when --inputs is not given (default 4)")
    defaults = ", ".join(f"{dtype} {rtol:g}/{atol:g}" for dtype, (rtol, atol) in TOLERANCES.items())
    parser.add_argument("--rtol", type=float,
                        help=f"relative tolerance per element (default by the model's compute dtype, rtol/atol: {defaults})")
    parser.add_argument("--atol", type=float,
                        help="absolute tolerance per element (default: the dtype's, or rtol x the output's largest "
                             "magnitude when that is larger)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    options = input_options(args)
    if args.samples < 1:
        from ..errors import OnnxSparseError

        raise OnnxSparseError("--samples must be at least 1")
    open_pair(args)
    checks = verify(args.original, args.compiled, args.inputs, args.samples, args.batch_size, args.rtol, args.provider,
                    atol=args.atol, quiet=args.quiet, **options)
    passed = all(c.passed for c in checks)
    if args.json:
        print(json.dumps(to_dict(checks), indent=2))
        return 0 if passed else 1
    compute = checks[0].compute_dtype if checks else "-"
    print(f"compute dtype {compute}; an element passes when |diff| <= atol + rtol * |original|")
    print(f"{'output':24} {'dtype':9} {'max |diff|':>11} {'rel L2':>10} {'cosine':>10} {'rtol':>8} {'atol':>9} "
          f"{'worst':>7}  result")
    for c in checks:
        print(
            f"{c.name:24} {c.dtype:9} {c.max_abs:11.3g} {c.rel_l2:10.3g} {c.cosine:10.7f} {c.rtol:8.2g} {c.atol:9.3g} "
            f"{c.worst:7.3g}  {'ok' if c.passed else 'MISMATCH'}"
        )
    if checks and checks[0].reference:
        print(f"reference: ONNX Runtime's {checks[0].reference} on the original")
    if checks and checks[0].compute_dtype == "int8":
        spread = max(c.int8_spread for c in checks)
        print(f"int8: ONNX Runtime's integer and float runs of the original differ by up to {spread:.3g} "
              "on an output's worst batch (its atol floor: the model defines its outputs no more closely)")
    print("verified: outputs match" if passed else "verify FAILED: outputs differ beyond tolerance")
    return 0 if passed else 1
