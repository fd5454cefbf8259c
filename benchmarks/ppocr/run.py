"""PP-OCRv6 text recognition pruned to 2:4: line accuracy and CER for dense, magnitude, Wanda, SparseGPT.

    python benchmarks/ppocr/run.py [--model PP-OCRv6_rec_small.onnx] [--out benchmarks/results]

Without ``--model`` it uses ``PP-OCRv6_rec_small.onnx`` from the ``rapidocr==3.10.0`` package,
installing that package (``pip install --no-deps``: only its files are needed) when it is missing.
Renders ``--eval-lines`` evaluation and ``--calib-lines`` calibration lines (disjoint texts,
``render.py``), preprocesses them as rapidocr does (``ocr.py``), then for each layer set

- ``matmul``: the MatMul layers only (the SVTR neck), head excluded;
- ``all``: every eligible layer, head excluded (onnxsparse's default);
- ``sensitivity``: the layers ``prune --method sparsegpt --prune-head --max-error E`` chooses
  (greedy, largest weights first, cumulative model-output error <= E on the calibration data);
  magnitude and Wanda are run on that same set

prunes with each method, and reports exact-line accuracy, character error rate, the share of the
model's Conv/MatMul/Gemm weight parameters in 2:4 layers, and the output error on the calibration
data. Writes ``ppocr.md`` and ``ppocr.json`` to ``--out``. Runs on demand only (never in tests).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from ocr import alphabet, batches, recognise, score  # noqa: E402
from render import make_lines  # noqa: E402

from onnxsparse.prune import Calibration, PruneOptions, prune_model  # noqa: E402

PACKAGE, VERSION, MODEL_FILE = "rapidocr", "3.10.0", "PP-OCRv6_rec_small.onnx"
METHODS = ("magnitude", "wanda", "sparsegpt")


def log(message: str) -> None:
    print(f"[ppocr] {message}", file=sys.stderr, flush=True)


def find_model() -> Path:
    """The model inside the installed rapidocr package, installing rapidocr==3.10.0 if needed."""
    from importlib import metadata

    try:
        installed = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        installed = None
    if installed != VERSION:
        log(f"installing {PACKAGE}=={VERSION} (--no-deps: only the model and its source are used)")
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", f"{PACKAGE}=={VERSION}"], check=True)
        importlib.invalidate_caches()
    spec = importlib.util.find_spec(PACKAGE)  # does not import it (its dependencies may be absent)
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / MODEL_FILE
    if not path.is_file():
        raise SystemExit(f"{path}: not found in the {PACKAGE} package")
    return path


def evaluate(model: onnx.ModelProto, batched, chars, truth) -> dict:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return score(recognise(session, batched, chars, len(truth)), truth)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help=f"path to {MODEL_FILE} (default: from the {PACKAGE}=={VERSION} package)")
    parser.add_argument("--eval-lines", type=int, default=250)
    parser.add_argument("--calib-lines", type=int, default=64)
    parser.add_argument("--max-error", type=float, default=0.1, help="output error budget of the sensitivity set")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    if not out.is_dir():
        raise SystemExit(f"{out}: output folder does not exist")
    started = time.time()

    model_path = Path(args.model) if args.model else find_model()
    model = onnx.load(model_path)
    chars = alphabet(model)
    eval_texts, eval_images = make_lines(args.eval_lines, seed=1)
    calib_texts, calib_images = make_lines(args.calib_lines, seed=2, exclude=set(eval_texts))
    assert not set(eval_texts) & set(calib_texts)
    eval_batches = batches(eval_images)
    calib_dir = Path(tempfile.mkdtemp(prefix="ppocr-calib-"))
    for index, (_, x) in enumerate(batches(calib_images)):
        np.savez(calib_dir / f"{index:03d}.npz", x=x)
    calibration = Calibration(model, calib_dir)
    log(f"{len(eval_texts)} evaluation and {len(calib_texts)} calibration lines rendered")

    dense = evaluate(model, eval_batches, chars, eval_texts)
    log(f"dense: {dense}")
    rows = []

    def run(scope: str, method: str, options: PruneOptions) -> PruneOptions:
        t0 = time.time()
        pruned, report = prune_model(model, options, calibration)
        seconds = time.time() - t0
        result = evaluate(pruned, eval_batches, chars, eval_texts)
        row = {
            "scope": scope, "method": method, "layers": len(report.layers),
            "pruned_params": report.pruned_params, "total_params": report.total_params,
            "param_share": report.pruned_params / report.total_params,
            "output_rel_l2": report.output_error.rel_l2, "output_cosine": report.output_error.cosine,
            **result, "line_accuracy_drop": dense["line_accuracy"] - result["line_accuracy"],
            "prune_seconds": seconds, "layer_names": [layer.name for layer in report.layers],
        }
        rows.append(row)
        log(f"{scope} {method}: {len(report.layers)} layers, {row['param_share']:.1%} params, "
            f"acc {result['line_accuracy']:.1f}, CER {result['cer']:.2f}, {seconds:.0f}s pruning")
        return report

    for method in METHODS:
        run("matmul", method, PruneOptions(method=method, include=["MatMul"]))
    for method in METHODS:
        run("all", method, PruneOptions(method=method))
    chosen = run("sensitivity", "sparsegpt", PruneOptions(method="sparsegpt", prune_head=True, max_error=args.max_error))
    names = [layer.name for layer in chosen.layers]
    for method in ("magnitude", "wanda"):
        run("sensitivity", method, PruneOptions(method=method, prune_head=True, include=names))

    record = {
        "model": MODEL_FILE, "package": f"{PACKAGE}=={VERSION}" if not args.model else None,
        "eval_lines": len(eval_texts), "calib_lines": len(calib_texts), "max_error": args.max_error,
        "dense": dense, "results": rows,
        "command": "python benchmarks/ppocr/run.py" + (f" --max-error {args.max_error:g}" if args.max_error != 0.1 else ""),
        "environment": {"onnxruntime": ort.__version__, "numpy": np.__version__, "python": platform.python_version(),
                        "cpus": os.cpu_count()},
        "seconds": time.time() - started,
    }
    (out / "ppocr.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "ppocr.md").write_text(markdown(record))
    log(f"wrote {out / 'ppocr.md'} and {out / 'ppocr.json'} in {record['seconds']:.0f}s")
    return 0


def markdown(record: dict) -> str:
    dense = record["dense"]
    lines = [
        "# PP-OCRv6 text recognition pruned to 2:4",
        "",
        f"Model `{record['model']}` ({record['package'] or 'given with --model'}); {record['eval_lines']} rendered "
        f"evaluation lines, {record['calib_lines']} disjoint calibration lines (DejaVu fonts, `benchmarks/ppocr/render.py`); "
        "rapidocr's preprocessing and CTC greedy decoding. One-shot pruning, no fine-tuning.",
        "",
        f"Command: `{record['command']}` ({record['seconds'] / 60:.1f} min on {record['environment']['cpus']} CPUs, "
        f"onnxruntime {record['environment']['onnxruntime']}).",
        "",
        f"Dense: exact-line accuracy **{dense['line_accuracy']:.1f}%**, CER {dense['cer']:.2f}%.",
        "",
        "| layers | method | 2:4 layers | params in 2:4 | output rel. L2 (calib) | line accuracy | Δ vs dense | CER |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in record["results"]:
        lines.append(
            f"| {row['scope']} | {row['method']} | {row['layers']} | {row['param_share']:.1%} | {row['output_rel_l2']:.3f} "
            f"| {row['line_accuracy']:.1f}% | {-row['line_accuracy_drop']:+.1f} | {row['cer']:.2f}% |"
        )
    sens = [r for r in record["results"] if r["scope"] == "sensitivity" and r["method"] == "sparsegpt"]
    lines += [
        "",
        "Layer sets: `matmul` = the MatMul layers (head excluded); `all` = every eligible Conv/MatMul layer, head "
        "excluded (the default; depthwise convs and the 3-channel stem are not eligible); `sensitivity` = the layers "
        f"`onnxsparse prune --method sparsegpt --prune-head --max-error {record['max_error']:g}` keeps "
        "(largest first, cumulative output error on the calibration data), the same set for magnitude and Wanda.",
    ]
    if sens:
        lines += ["", "Sensitivity set: " + ", ".join(f"`{n}`" for n in sens[0]["layer_names"]) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
