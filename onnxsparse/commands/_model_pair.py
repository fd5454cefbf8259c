"""Arguments shared by the commands that run an original model beside its compiled form."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import io
from ..errors import OnnxSparseError
from ..session import PROVIDERS


def add_model_pair_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("original", help="the dense model")
    parser.add_argument("compiled", help="the model `onnxsparse compile` wrote from it")
    add_input_arguments(parser)
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu", help="execution provider (default cpu)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """How inputs are read or generated (polygraphy's names where it has one)."""
    parser.add_argument("--inputs", help=".npz file (or directory of them) keyed by input name, fed as they are "
                                         "(split along axis 0 only when axis 0 is every input's dynamic batch "
                                         "axis); default: random inputs")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size for dynamic batch dimensions (default 1)")
    parser.add_argument("--input-shapes", nargs="+", default=[], metavar="NAME:[D1,D2,...]",
                        help="the full shape of a generated input, e.g. x:[1,3,224,224] (dynamic dims otherwise: "
                             "--batch-size on axis 0, 32 elsewhere)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated inputs (default 0)")
    parser.add_argument("--int-range", nargs=2, type=int, metavar=("LOW", "HIGH"),
                        help="generated integer inputs are drawn from [LOW, HIGH) (default 0 16; e.g. token ids: "
                             "0 30522)")


def input_options(args: argparse.Namespace) -> dict:
    """Keyword arguments for ``Calibration`` from the input arguments (refused with one line when wrong)."""
    from ..tune.problems import parse_input_shapes

    if args.batch_size < 1:
        raise OnnxSparseError("--batch-size must be at least 1")
    try:
        shapes = parse_input_shapes(args.input_shapes)
    except ValueError as exc:
        raise OnnxSparseError(str(exc)) from None
    if args.int_range is not None and args.int_range[0] >= args.int_range[1]:
        raise OnnxSparseError("--int-range LOW HIGH needs LOW < HIGH")
    if args.inputs is not None and (shapes or args.int_range):
        raise OnnxSparseError("--input-shapes and --int-range shape generated inputs; they do not apply to --inputs")
    return {"seed": args.seed, "shapes": shapes, "int_range": tuple(args.int_range) if args.int_range else None}


def open_pair(args: argparse.Namespace):
    """The two models' graphs (weights left in their files) after the usual checks of both files.

    Sessions are opened from the paths, so ONNX Runtime maps external data itself; nothing here
    holds a model's weights in memory or serializes a model.
    """
    return io.load_model_graph(Path(args.original)), io.load_model_graph(Path(args.compiled))
