"""``onnxsparse prune MODEL [-o OUT] --method magnitude|wanda|sparsegpt``: dense model -> 2:4 weights.

Prunes the selected Conv/MatMul/Gemm weights to N:M (2:4 by default) along SPEC's sparse axis,
so that ``check`` passes them and ``compile`` rewrites them. Calibration data (``--calib``, one
``.npz`` or a directory of them, keys = the model's input names) drives wanda and sparsegpt and
measures every method's error on a held-out part of it (or ``--holdout``); without it, random inputs
from the input specs are used, with a warning (magnitude without ``--max-error`` needs no data at
all). Progress goes to stderr, the report to stdout (``--json`` for machines).

A model with external data is pruned with its weights left in their files (``prune/files.py``):
one layer's weight in memory at a time, the output's data file written a tensor at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import io
from ..errors import OnnxSparseError
from ..prune import Calibration, PruneOptions, files, prune_model, scan_layers
from ..prune.pruner import no_layers_error
from ..prune.report import prune_text
from .check import PAD_CHANNELS_HELP

NAME = "prune"
HELP = "prune a dense model's Conv/MatMul/Gemm weights to 2:4 (magnitude, wanda or sparsegpt)"
ORDER = 15


def add_selection_arguments(parser: argparse.ArgumentParser, default_method: str) -> None:
    """Options shared with ``sensitivity``: method, N:M, calibration, layer selection."""
    parser.add_argument("model", help="the dense ONNX model (never modified)")
    parser.add_argument("--method", default=default_method, metavar="{magnitude,wanda,sparsegpt,auto}",
                        help=f"magnitude, wanda, sparsegpt, or auto: per layer the one (and SparseGPT's damping, "
                             f"sequential or not) with the lowest held-out error (default {default_method})")
    parser.add_argument("--n", type=int, default=2, help="weights kept per group (default 2)")
    parser.add_argument("--m", type=int, default=4, help="group size along K (default 4)")
    parser.add_argument("--calib", help=".npz file or directory of .npz files; keys are the model's input names")
    parser.add_argument("--holdout", metavar="DIR",
                        help=".npz file or directory of held-out data for every reported error (default: one "
                             "--calib batch in four is held out); with --max-error or --method auto it is split in "
                             "two: one half chooses, the other verifies the reported error")
    parser.add_argument("--calib-samples", type=int, default=32,
                        help="samples to generate when --calib is not given (default 32)")
    parser.add_argument("--batch-size", type=int, default=8, help="calibration samples per run (default 8)")
    parser.add_argument("--input-shapes", nargs="+", default=[], metavar="NAME:[D1,D2,...]",
                        help="full shape of a generated calibration input, e.g. x:[1,3,224,224] (without --calib)")
    parser.add_argument("--seed", type=int, default=0, help="seed of generated calibration inputs (default 0)")
    parser.add_argument("--int-range", nargs=2, type=int, metavar=("LOW", "HIGH"),
                        help="generated integer inputs are drawn from [LOW, HIGH) (default 0 16)")
    parser.add_argument("--include", action="append", default=[], metavar="PATTERN",
                        help="only layers whose node name or op type matches (fnmatch; repeatable)")
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="leave layers whose node name or op type matches dense (fnmatch; repeatable)")
    parser.add_argument("--prune-head", action="store_true",
                        help="also prune the head (the last layer before a graph output; kept dense by default)")
    parser.add_argument("--block-size", type=int, default=128, help="sparsegpt: columns per block (default 128)")
    parser.add_argument("--damp", type=float, default=0.01,
                        help="sparsegpt: Hessian dampening, share of its mean diagonal (default 0.01)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "numpy"),
                        help="where SparseGPT's linear algebra runs: torch on the CPU or a CUDA GPU (pip install "
                             "'onnxsparse[torch]'), or numpy; auto (default): CUDA when torch sees a GPU, else "
                             "torch on the CPU for large layers, else numpy")
    parser.add_argument("--pad-channels", action="store_true", help=PAD_CHANNELS_HELP + "; prune writes the "
                        "weight in its own shape, its trailing group of real channels within N non-zeros")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_selection_arguments(parser, "magnitude")
    parser.add_argument("-o", "--output", help="output model (default: <stem>.pruned.onnx beside the input)")
    parser.add_argument("--max-error", type=float, metavar="E",
                        help="prune only the layers (largest first, each re-measured with those kept) that keep "
                             "the model output's relative L2 error on held-out data <= E: chosen on one half of the held-out "
                             "data; if the other half measures above E, the last chosen go back to dense until both "
                             "halves are within E")
    parser.add_argument("--error-metric", choices=("l2", "flips"), default="l2",
                        help="what --max-error bounds: the model output's relative L2 error (l2, default), or the "
                             "share of held-out samples (positions of the output's last axis) whose argmax changes "
                             "from the dense model's (flips: for classifiers; E 0.01 = 1%%, at most that much "
                             "accuracy on data like the held-out data)")
    parser.add_argument("--order", choices=("size", "ratio"), default="size",
                        help="--max-error/auto: visit layers largest first (size, default) or by weights per "
                             "squared held-out error when pruned alone (ratio: a sensitivity pass first)")
    parser.add_argument("--no-sequential", action="store_true",
                        help="wanda/sparsegpt: take every layer's inputs from the dense model in one pass")
    parser.add_argument("--recover", type=int, default=0, metavar="STEPS",
                        help="after pruning, train the float32 weights (pruned zeros kept) for STEPS Adam steps, one "
                             "fit batch each, to match the dense model's outputs on the calibration data (no labels; "
                             "needs torch); kept only if the held-out error falls, before --max-error's "
                             "verification (default 0: one-shot)")
    parser.add_argument("--recover-lr", type=float, default=1e-3, metavar="LR",
                        help="--recover's Adam learning rate, decayed to 0 along a cosine (default 1e-3)")


def options_from(args: argparse.Namespace) -> PruneOptions:
    options = PruneOptions(
        method=args.method, n=args.n, m=args.m, include=args.include, exclude=args.exclude,
        prune_head=args.prune_head, block_size=args.block_size, damp=args.damp,
        sequential=not getattr(args, "no_sequential", False), max_error=getattr(args, "max_error", None),
        device=args.device, order=getattr(args, "order", "size"), pad_channels=args.pad_channels,
        error_metric=getattr(args, "error_metric", "l2"), recover=getattr(args, "recover", 0),
        recover_lr=getattr(args, "recover_lr", 1e-3),
    )
    options.validate()
    if args.batch_size < 1 or args.calib_samples < 1:
        raise OnnxSparseError("--batch-size and --calib-samples must be at least 1")
    return options


def progress_printer(args: argparse.Namespace):
    if args.quiet:
        return None
    return lambda message: print(f"onnxsparse {args.command}: {message}", file=sys.stderr, flush=True)


def needs_data(args: argparse.Namespace) -> bool:
    """Magnitude pruning needs no data: without --calib/--max-error none is read, generated or warned about."""
    return bool(args.calib) or args.method != "magnitude" or getattr(args, "max_error", None) is not None \
        or args.command == "sensitivity" or getattr(args, "recover", 0) > 0


def load_holdout(args: argparse.Namespace, model) -> Calibration | None:
    if not getattr(args, "holdout", None):
        return None
    return Calibration(model, args.holdout, batch_size=args.batch_size)


def load_calibration(args: argparse.Namespace, model) -> Calibration | None:
    if not needs_data(args):
        return None
    from ..tune.problems import parse_input_shapes

    try:
        shapes = parse_input_shapes(args.input_shapes)
    except ValueError as exc:
        raise OnnxSparseError(str(exc)) from None
    if args.int_range is not None and args.int_range[0] >= args.int_range[1]:
        raise OnnxSparseError("--int-range LOW HIGH needs LOW < HIGH")
    if args.calib and (shapes or args.int_range):
        raise OnnxSparseError("--input-shapes and --int-range shape generated inputs; they do not apply to --calib")
    calibration = Calibration(model, args.calib, batch_size=args.batch_size, samples=args.calib_samples,
                              seed=args.seed, shapes=shapes, int_range=tuple(args.int_range) if args.int_range else None)
    if calibration.synthetic:
        next(iter(calibration), None)  # a wrong --input-shapes is refused before the warning (one line)
        print(f"onnxsparse {args.command}: warning: no --calib given; using {args.calib_samples} random samples "
              "from the model's input specs (real data gives much better pruning and error estimates)",
              file=sys.stderr)
    return calibration


def run(args: argparse.Namespace) -> int:
    options = options_from(args)
    source = Path(args.model)
    out = io.check_output_path(args.output if args.output is not None else source.with_name(f"{source.stem}.pruned.onnx"),
                               inputs=[source])
    if io.uses_external_data(source):
        if options.recover:
            raise OnnxSparseError("--recover trains every weight in memory; a model with external data is pruned "
                                  "without it (prune, then fine-tune it with your training code)")
        # Weights stay in their files: read one layer at a time, written to the output's data file.
        with files.open_model(source, out) as (model, store):
            pruned, report = _prune(args, options, model)
            written = files.save(pruned, out, store, inputs=[source])
    else:
        pruned, report = _prune(args, options, io.load_model(source))
        written = io.save_model(pruned, out, external_data=False, inputs=[source])
    if args.json:
        print(json.dumps({**report.to_json(), "output": str(out), "written": [str(p) for p in written]}, indent=2))
    else:
        print(prune_text(report))
        print(f"wrote {out}")
    return 0


def _prune(args: argparse.Namespace, options: PruneOptions, model):
    scan = scan_layers(model, options.m, options.include, options.exclude, options.prune_head, options.pad_channels)
    if not scan.layers:  # before the calibration warning: this is the one thing to say
        raise no_layers_error(scan.skipped)
    calibration = load_calibration(args, model)
    return prune_model(model, options, calibration, progress_printer(args),
                       holdout=load_holdout(args, model) if calibration is not None else None)
