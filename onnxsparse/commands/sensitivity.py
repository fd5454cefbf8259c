"""``onnxsparse sensitivity MODEL``: the model-output error each layer causes when pruned alone.

Every eligible layer is pruned to N:M on its own (``--method``, magnitude by default) and the
model's outputs on held-out data (``--holdout``, or one ``--calib`` batch in four) are compared with the dense model's (relative L2 and
cosine similarity). A table, most harmful first; ``--json``; ``--plot out.png`` (matplotlib).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import io, progress
from ..errors import OnnxSparseError
from ..prune import layer_sensitivity, scan_layers
from ..prune.pruner import no_layers_error
from ..prune.report import plot_sensitivity, sensitivity_text
from ..prune.evaluate import ReferenceOutputs
from ..prune.holdout import split_calibration
from .prune import add_selection_arguments, load_calibration, load_holdout, options_from

NAME = "sensitivity"
HELP = "prune each eligible layer alone and report the model-output error it causes"
ORDER = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_selection_arguments(parser, "magnitude")
    parser.add_argument("--plot", metavar="PNG", help="also draw the errors as a bar chart (needs matplotlib)")


def run(args: argparse.Namespace) -> int:
    options = options_from(args)
    model = io.load_model(Path(args.model))
    if args.plot:
        plot = Path(args.plot)
        if not (plot.parent if str(plot.parent) else Path(".")).is_dir():
            raise OnnxSparseError(f"{plot}: output folder '{plot.parent}' does not exist")
    scan = scan_layers(model, options.m, options.include, options.exclude, options.prune_head, options.pad_channels)
    if not scan.layers:
        raise no_layers_error(scan.skipped)
    calibration = load_calibration(args, model)
    split = split_calibration(calibration, load_holdout(args, model))
    with progress.Reporter(f"onnxsparse {args.command}", quiet=args.quiet) as say:  # a bar with ETA on a terminal
        found = layer_sensitivity(model, scan.layers, split.fit, options, reference=ReferenceOutputs(model, split.held),
                                  say=say)
    if args.plot:
        plot_sensitivity(found, args.plot)
    if args.json:
        print(json.dumps({"method": options.method, "n": options.n, "m": options.m,
                          "holdout": split.description, "layers": [s.to_json() for s in found],
                          "skipped": [{"name": s.node, "op_type": s.op_type, "reason": s.reason} for s in scan.skipped]},
                         indent=2))
    else:
        print(sensitivity_text(found, options.method, options.n, options.m))
        if scan.skipped:
            print(f"\nnot analysed ({len(scan.skipped)}):")
            print("\n".join(f"  {s.node} ({s.op_type}): {s.reason}" for s in scan.skipped))
        if args.plot:
            print(f"wrote {args.plot}")
    return 0
