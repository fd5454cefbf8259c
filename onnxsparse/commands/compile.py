"""``onnxsparse compile MODEL [-o OUT] [--no-fold] [--target cpu|cuda|host] [--json]``: the compiler.

Prints what it rewrote, what it left dense and why, and the weight bytes before and after. The
output goes beside the input as ``<stem>.sparse.onnx`` unless ``-o`` says otherwise; its folder is
checked before any work. A model read with external data is written with external data. The
compile streams (``compile_model(..., output=...)``): a model of any size, one weight in memory at
a time.

With ``--target``, each layer is decided by a measurement of the machine it is compiled for
(``onnxsparse.tune``: this machine's tuned cache, else a shipped table keyed to this hardware,
else dense), and the report gives the measurement that decided each layer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import io, progress
from ..compiler import channel_padding
from ..api import compile_model
from ..errors import OnnxSparseError
from ..targets import make_policy, parse_dims
from .check import PAD_CHANNELS_HELP, format_shape

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
        choices=("cpu", "cuda", "host"),
        help="where the model will run (host: this machine's provider): a layer runs sparse only where a "
        "measurement of that machine (onnxsparse tune, or a shipped table of the same hardware) found it "
        "faster; unmeasured layers stay dense (default: no target, every eligible layer is rewritten)",
    )
    parser.add_argument(
        "--hardware",
        metavar="KEY",
        help="with --target: compile for another machine, named by its key in the tuning cache (a unique "
        "part of it; `onnxsparse tune --list`) or a shipped table's hardware id",
    )
    parser.add_argument("--threads", type=int, default=0,
                        help="with --target: the intra-op threads the model will run with, as given to tune (default 0)")
    parser.add_argument("--cpu-isa", choices=("avx512", "avx2", "portable"),
                        help="with --target cpu: the CPU kernel path the sessions will force, as given to tune")
    parser.add_argument("--cache", help="with --target: the tuning cache file (default: tune's)")
    parser.add_argument("--input-shapes", nargs="+", default=[], metavar="NAME:[D1,D2,...]",
                        help="with --target: the full shape of an input the model will run with")
    # One pattern per flag (repeatable): a flag taking a variable number of values would swallow the
    # model path in `compile --force-sparse model.onnx`.
    parser.add_argument(
        "--force-sparse",
        action="append",
        metavar="PATTERN",
        help="rewrite the eligible layers matching this node-name or op-type pattern (fnmatch) whatever "
        "the measurements say; '*': every eligible layer. Repeatable.",
    )
    parser.add_argument(
        "--force-dense", action="append", metavar="PATTERN", default=[],
        help="keep the layers matching this pattern dense. Repeatable.",
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
    parser.add_argument("--pad-channels", action="store_true", help=PAD_CHANNELS_HELP)
    parser.add_argument(
        "--conv-layout",
        choices=("nchw", "nhwc"),
        default="nchw",
        help="nhwc: run chains of sparse convs (with the Relus and residual Adds between them) in NHWC, "
        "with Transposes only at the chains' ends; for CUDA, where a sparse conv on NHWC activations is "
        "one GEMM over all pixels. Measured slower on ResNet-50 at batch 32 on an H200 (0.91x of the "
        "dense model; docs/performance.md), so not the default (nchw: each conv as ONNX's Conv)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr (none when it is not a terminal)")


def default_output(model: Path) -> Path:
    return model.with_name(f"{model.stem}.sparse.onnx")


def run(args: argparse.Namespace) -> int:
    source = Path(args.model)
    if not source.is_file():
        io.load_model(source)  # raises the one-line error that says what is wrong with the path
    out = io.check_output_path(args.output if args.output is not None else default_output(source), inputs=[source])

    force_sparse = args.force_sparse
    try:
        dims = parse_dims(args.dim)
        from ..tune.problems import parse_input_shapes

        shapes = parse_input_shapes(args.input_shapes)
    except ValueError as e:
        raise OnnxSparseError(str(e)) from None
    if args.target is None:
        for given, flag in ((dims, "--dim"), (shapes, "--input-shapes"), (args.hardware, "--hardware"),
                            (args.cache, "--cache"), (args.threads, "--threads"), (args.cpu_isa, "--cpu-isa")):
            if given:
                raise OnnxSparseError(f"{flag} only informs the choice of --target; give --target cpu, cuda or host")
        policy = make_policy(None, force_sparse=force_sparse, force_dense=args.force_dense)
        if not args.force_dense:
            policy = None
    else:
        if dims:
            _check_dim_names(io.load_model_graph(source), dims)
        policy = _measured_policy(args, dims, shapes, force_sparse)
    with progress.working(f"onnxsparse compile {source.name}", quiet=args.quiet):
        # Streams: one weight in memory at a time, whatever the model's size (api.compile_model).
        result = compile_model(source, fold=not args.no_fold, policy=policy, output=out,
                               external_data=io.uses_external_data(source), pad_channels=args.pad_channels,
                               conv_layout=args.conv_layout)
    written = result.written

    report = result.to_dict()
    choices = getattr(policy, "choices", {})
    if choices:
        for layer in report["layers"]:
            if layer["node"] in choices:
                layer["decided_by"] = choices[layer["node"]].to_dict()
        report["target"] = policy.report()
    if args.json:
        print(json.dumps({**report, "output": str(out), "written": [str(p) for p in written]}, indent=2))
        return 0
    print_summary(result, source, out, policy if choices else None)
    return 0


def _check_dim_names(model, dims: dict[str, int]) -> None:
    """A ``--dim`` must name a symbolic dimension of the model's inputs (a typo would go unnoticed)."""
    symbolic = {d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim if d.dim_param}
    unknown = sorted(set(dims) - symbolic)
    if unknown:
        known = ", ".join(sorted(symbolic)) or "none: every input dimension is fixed"
        raise OnnxSparseError(f"--dim {', '.join(unknown)}: not a symbolic input dimension of the model "
                              f"(the model's: {known})")


def _measured_policy(args, dims, shapes, force_sparse):
    from ..tune import MeasuredPolicy, TuneCache, resolve_target

    if args.threads < 0:
        raise OnnxSparseError("--threads must be 0 (ONNX Runtime's choice) or more")
    cache = TuneCache.load(args.cache)
    provider, key = resolve_target(args.target, args.threads, args.cpu_isa, args.hardware, cache)
    return MeasuredPolicy(provider, key, cache, dims, shapes, force_sparse=force_sparse, force_dense=args.force_dense,
                          pad_channels=args.pad_channels)


def _decided(choice) -> str:
    saved = f", {choice.saved_us:.1f} us saved per call" if choice.saved_us is not None and choice.sparse else ""
    return f"[{choice.source}] {choice.reason}{saved}"


def print_summary(result, source: Path, out: Path, policy=None) -> None:
    rewritten, left = result.rewritten, result.left
    choices = policy.choices if policy is not None else {}
    if policy is not None:
        print(f"target {policy.provider}: {policy.key.short}" + (f" at {policy.shapes}" if policy.shapes else ""))
        if policy.verdict and policy.verdict.get("dense_layers"):
            v = policy.verdict
            print(f"  the whole-model check of tune keeps {len(v['dense_layers'])} layers dense "
                  f"({v['ratio_before']:.3f}x end to end with them sparse, {v['ratio']:.3f}x without)")
    if rewritten:
        print(f"rewrote {len(rewritten)} of {len(result.layers)} layers ({'folded' if result.folded else 'CompressOp kept'}):")
        for layer in rewritten:
            record = layer.record
            print(
                f"  {record.node}: {record.op} -> {layer.replacement} "
                f"(weight {record.weight} {format_shape(record.shape)} {record.dtype}"
                + (f"; bias from Add {layer.fused_bias}" if layer.fused_bias else "")
                + (f"; BatchNormalization {layer.folded_batchnorm} folded" if layer.folded_batchnorm else "")
                + (f"; {channel_padding.describe(record.shape[1], record.padded_channels)}"
                   if record.padded_channels else "")
                + ")"
            )
            if layer.batchnorm_not_folded:
                print(f"    BatchNormalization not folded: {layer.batchnorm_not_folded}")
            if record.node in choices:
                print(f"    {_decided(choices[record.node])}")
    else:
        eligible = any(layer.record.eligible for layer in left)
        print("nothing was rewritten" + ("" if eligible else ": no layer is eligible"))
    if left:
        print(f"left {len(left)} layer{'s' if len(left) != 1 else ''} dense:")
        for layer in left:
            choice = choices.get(layer.record.node)
            reason = _decided(choice) if choice is not None and choice.reason == layer.reason else layer.reason
            print(f"  {layer.record.node}: {layer.record.op}: {reason}")
    if result.casts_folded:
        count = len(result.casts_folded)
        what = "Cast to float16 into the int8 op it follows" if count == 1 else \
            "Casts to float16 into the int8 ops they follow"
        print(f"folded {count} {what} (the fp16 form: the same values, one pass less)")
    before, after = result.weight_bytes_before, result.weight_bytes_after
    ratio = f" ({100.0 * after / before:.1f}%)" if before else ""
    print(f"weight bytes: {before:,} before, {after:,} after{ratio}")
    print(f"wrote {out}" + ("" if result.changed else " (the model unchanged)"))
