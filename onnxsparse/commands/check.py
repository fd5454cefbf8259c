"""``onnxsparse check MODEL [--json]``: the per-layer 2:4 report; exit 0 whenever the model was read."""

from __future__ import annotations

import argparse
import json

from ..api import check_model
from ..compiler import channel_padding
from ..compiler.eligibility import percent

NAME = "check"
# Shared by check, compile and prune: an extension of SPEC, off by default.
PAD_CHANNELS_HELP = ("treat a 2-D Conv with group 1 whose input channels C are not a multiple of 4 (M for "
                     "prune) as the same Conv on C zero-padded up to one (exact: the added channels are zero); "
                     "compile inserts the Pad. Default: such a layer is not eligible (SPEC)")
HELP = "report which Conv/MatMul/Gemm weights are 2:4-sparse and why any layer is not eligible"
ORDER = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the ONNX model to inspect")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--pad-channels", action="store_true", help=PAD_CHANNELS_HELP)


def run(args: argparse.Namespace) -> int:
    report = check_model(args.model, pad_channels=args.pad_channels)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    compiled = report.compiled_summary()
    if not report.layers:
        print(f"{args.model}: {compiled}" if compiled else f"{args.model}: no Conv, MatMul or Gemm layers")
        return 0
    rows = [
        (
            f"{layer.node} (in {layer.scope})" if layer.scope else layer.node,
            layer.op,
            layer.weight or "-",
            format_shape(layer.shape),
            layer.dtype or "-",
            percent(layer.share) if layer.share is not None else "-",
            eligibility(layer),
        )
        for layer in report.layers
    ]
    print_table(("node", "op", "weight", "shape", "dtype", "2:4", "eligible"), rows)
    print(f"{len(report.eligible)} of {len(report.layers)} layers eligible")
    if compiled:
        print(compiled)
    return 0


def eligibility(layer) -> str:
    """"eligible", "eligible after zero-padding C from 50 to 52", or "no: <reason>"."""
    if not layer.eligible:
        return f"no: {layer.reason}"
    if layer.padded_channels:
        return f"eligible {channel_padding.describe(layer.shape[1], layer.padded_channels)}"
    return "eligible"


def format_shape(shape: tuple[int, ...] | None) -> str:
    return "-" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell; the last column (reasons) is left unpadded."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths)]
        print("  ".join([*cells, str(row[-1])]))
