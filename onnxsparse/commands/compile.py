"""``onnxsparse compile MODEL [-o OUT] [--no-fold] [--json]``: the compiler.

Prints what it rewrote, what it left dense and why, and the weight bytes before and after. The
output goes beside the input as ``<stem>.sparse.onnx`` unless ``-o`` says otherwise; its folder is
checked before any work. A model read with external data is written with external data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import io
from ..api import compile_model
from ..errors import OnnxSparseError
from ..targets import TARGETS, make_policy, parse_dims
from .check import format_shape

NAME = "compile"
HELP = "rewrite 2:4-sparse Conv/MatMul/Gemm layers into onnxsparse's custom ops"
ORDER = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the ONNX model to compile (never modified)")
    parser.add_argument("-o", "--output", help="output model (default: <stem>.sparse.onnx beside the input)")
    parser.add_argument(
        "--no-fold", action="store_true", help="keep CompressOp in the graph (compress when the session starts)"
    )
    parser.add_argument(
        "--target",
        choices=TARGETS,
        help="where the model will run: a layer whose sparse kernel was measured slower than dense "
        "there stays dense (default: no target, every eligible layer is rewritten)",
    )
    parser.add_argument(
        "--force-sparse",
        nargs="*",
        metavar="PATTERN",
        help="rewrite the eligible layers matching these node-name or op-type patterns whatever the "
        "measurements say (no pattern: every eligible layer)",
    )
    parser.add_argument(
        "--force-dense", nargs="+", metavar="PATTERN", default=[], help="keep the layers matching these patterns dense"
    )
    parser.add_argument(
        "--dim",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="with --target: the value of a symbolic input dimension (batch, sequence) that the "
        "model will run with, for the per-layer choice only (the output keeps it symbolic); "
        "without it a layer must be faster at every measured M. Repeatable.",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def default_output(model: Path) -> Path:
    return model.with_name(f"{model.stem}.sparse.onnx")


def run(args: argparse.Namespace) -> int:
    source = Path(args.model)
    if not source.is_file():
        io.load_model(source)  # raises the one-line error that says what is wrong with the path
    out = Path(args.output) if args.output else default_output(source)
    io.check_output_path(out, inputs=[source])

    force_sparse = None if args.force_sparse is None else (args.force_sparse or ["*"])
    try:
        dims = parse_dims(args.dim)
    except ValueError as e:
        raise OnnxSparseError(str(e)) from None
    if dims and args.target is None:
        raise OnnxSparseError("--dim only informs the choice of --target; give --target cpu or cuda")
    policy = make_policy(args.target, force_sparse=force_sparse, force_dense=args.force_dense, dims=dims)
    if args.target is None and not args.force_dense:
        policy = None
    result = compile_model(source, fold=not args.no_fold, policy=policy)
    input_data = io.external_data_files(source)
    if input_data and (out.parent / f"{out.name}.data").resolve() in input_data:
        raise OnnxSparseError(f"{out}: its external data file would overwrite the input's; choose another -o")
    written = io.save_model(result.model, out, external_data=bool(input_data))

    if args.json:
        print(json.dumps({**result.to_dict(), "output": str(out), "written": [str(p) for p in written]}, indent=2))
        return 0
    print_summary(result, source, out)
    return 0


def print_summary(result, source: Path, out: Path) -> None:
    rewritten, left = result.rewritten, result.left
    if rewritten:
        print(f"rewrote {len(rewritten)} of {len(result.layers)} layers ({'folded' if result.folded else 'CompressOp kept'}):")
        for layer in rewritten:
            record = layer.record
            print(
                f"  {record.node}: {record.op} -> {layer.replacement} "
                f"(weight {record.weight} {format_shape(record.shape)} {record.dtype}"
                + (f"; bias from Add {layer.fused_bias}" if layer.fused_bias else "")
                + ")"
            )
    else:
        eligible = any(layer.record.eligible for layer in left)
        print("nothing was rewritten" + ("" if eligible else ": no layer is eligible"))
    if left:
        print(f"left {len(left)} layer{'s' if len(left) != 1 else ''} dense:")
        for layer in left:
            print(f"  {layer.record.node}: {layer.record.op}: {layer.reason}")
    before, after = result.weight_bytes_before, result.weight_bytes_after
    ratio = f" ({100.0 * after / before:.1f}%)" if before else ""
    print(f"weight bytes: {before:,} before, {after:,} after{ratio}")
    print(f"wrote {out}" + ("" if rewritten else " (the model unchanged)"))
