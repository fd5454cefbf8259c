"""One-shot 2:4 pruning benchmark on third-party models: the three PP-OCR models rapidocr ships.

    python benchmarks/prune_bench.py [--models rec,cls,det,magika] [--max-errors 0.05,0.1] [--out benchmarks/results]
    python benchmarks/prune_bench.py --big /tmp/pbig [--big-methods magnitude,sparsegpt] [--big-include fc0,fc1]

Models (from the ``rapidocr==3.10.0`` and ``magika==1.0.3`` wheels, installed ``--no-deps`` when missing;
nobody here wrote or tuned them), each with a real metric computed on data the pruner never saw:

- ``rec`` ``PP-OCRv6_rec_small.onnx`` (text recognition, SVTR-style): exact-line accuracy on
  rendered text lines (rapidocr's preprocessing and CTC decoding, ``ppocr/ocr.py``);
- ``cls`` ``ch_ppocr_mobile_v2.0_cls_mobile.onnx`` (text-line orientation, 0 or 180 degrees,
  MobileNetV3): accuracy on rendered lines, half of them turned 180 degrees;
- ``det`` ``PP-OCRv6_det_small.onnx`` (DB text detection): pixel F1 (percent) of its binarized
  probability map (> 0.3, as DB post-processing) against the boxes of lines rendered on a page;
- ``magika`` (``magika==1.0.3``, Google's file content-type classifier, ``standard_v3_3/model.onnx``):
  top-1 accuracy of its 214-way output on real files of this machine (Python's library, ``/usr``,
  ``/etc``; 20 types such as Python, JSON, HTML, C, ELF, PNG, gzip), the label taken from the file's
  extension, features computed as magika 1.0 does (first and last 1024 bytes, whitespace stripped).
  Fair: real files, not made for the test; evaluation and calibration files disjoint (by path hash);
  extension labels are noisy (the dense model scores 91%), so the metric measures agreement lost by
  pruning, not magika's published accuracy.

Why fair: the metric is the task's (not the pruner's error), the evaluation data is disjoint from
the calibration data (different texts and seeds), calibration is split again into fit and held-out
parts by the pruner, and every method gets the same data, layer set (every eligible layer, head
kept dense) and no fine-tuning (``--recover N`` adds the prune's recovery to every row). Rendered data is not the models' real-world distribution: accuracy
here measures how far pruning moves the model from dense, not the models' published accuracy.

Per model: dense; magnitude, Wanda, SparseGPT and ``auto`` on all eligible layers; ``auto
--max-error E --prune-head`` for each E: share of Conv/MatMul/Gemm weights in 2:4 layers, metric, held-out and
fit output error, prune time. Writes ``prune_bench.md`` and ``.json`` to ``--out``; also the
Pearson correlation between held-out error and the metric's drop over all pruned rows.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "ppocr"))
sys.path.insert(0, str(HERE.parent))

from ocr import alphabet, batches, recognise, score  # noqa: E402
from PIL import Image  # noqa: E402
from render import make_lines  # noqa: E402

from onnxsparse.errors import OnnxSparseError  # noqa: E402
from onnxsparse.prune import Calibration, PruneOptions, prune_model  # noqa: E402

PACKAGE, VERSION = "rapidocr", "3.10.0"
FILES = {"rec": "PP-OCRv6_rec_small.onnx", "cls": "ch_ppocr_mobile_v2.0_cls_mobile.onnx",
         "det": "PP-OCRv6_det_small.onnx", "magika": "standard_v3_3/model.onnx"}
METRIC = {"rec": "line accuracy %", "cls": "orientation accuracy %", "det": "pixel F1 %",
          "magika": "content-type accuracy %"}
PACKAGES = {"magika": ("magika", "1.0.3")}  # other models: rapidocr's


def log(message: str) -> None:
    print(f"[prune_bench] {message}", file=sys.stderr, flush=True)


def model_path(name: str) -> Path:
    from importlib import metadata

    package, version = PACKAGES.get(name, (PACKAGE, VERSION))
    try:
        installed = metadata.version(package)
    except metadata.PackageNotFoundError:
        installed = None
    if installed != version:
        log(f"installing {package}=={version} (--no-deps: only its model files are used)")
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", f"{package}=={version}"], check=True)
        importlib.invalidate_caches()
    spec = importlib.util.find_spec(package)
    return Path(list(spec.submodule_search_locations)[0]) / "models" / FILES[name]


def session(model: onnx.ModelProto):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


# --- rec --------------------------------------------------------------------------------------------


class Rec:
    def __init__(self, model, eval_count, calib_count):
        self.chars = alphabet(model)
        self.texts, images = make_lines(eval_count, seed=1)
        calib_texts, calib_images = make_lines(calib_count, seed=2, exclude=set(self.texts))
        self.eval = batches(images)
        self.calib = [x for _, x in batches(calib_images)]

    def metric(self, model) -> float:
        return score(recognise(session(model), self.eval, self.chars, len(self.texts)), self.texts)["line_accuracy"]


# --- cls --------------------------------------------------------------------------------------------


def cls_input(image: np.ndarray) -> np.ndarray:
    """rapidocr's TextClassifier: height 48, width up to 192 keeping the ratio, (x/255-0.5)/0.5, right pad."""
    h, w = image.shape[:2]
    width = min(192, int(np.ceil(48 * w / h)))
    resized = np.asarray(Image.fromarray(image).resize((width, 48), Image.BILINEAR), dtype=np.float32)
    out = np.zeros((3, 48, 192), np.float32)
    out[:, :, :width] = (resized.transpose(2, 0, 1) / 255 - 0.5) / 0.5
    return out


class Cls:
    def __init__(self, model, eval_count, calib_count):
        texts, images = make_lines(eval_count, seed=3)
        _, calib_images = make_lines(calib_count, seed=4, exclude=set(texts))
        rng = np.random.default_rng(5)
        self.labels = rng.integers(0, 2, len(images))
        turned = [img[::-1, ::-1] if label else img for img, label in zip(images, self.labels)]
        self.x = np.stack([cls_input(img) for img in turned])
        calib_turned = [img[::-1, ::-1] if i % 2 else img for i, img in enumerate(calib_images)]
        xs = np.stack([cls_input(img) for img in calib_turned])
        self.calib = [xs[i:i + 8] for i in range(0, len(xs), 8)]

    def metric(self, model) -> float:
        run = session(model)
        name = run.get_inputs()[0].name
        predicted = np.concatenate([run.run(None, {name: self.x[i:i + 32]})[0].argmax(axis=1)
                                    for i in range(0, len(self.x), 32)])
        return 100.0 * float((predicted == self.labels).mean())


# --- det --------------------------------------------------------------------------------------------


def page(rng, lines, size=(320, 320)):
    """Text lines pasted on a light page at random non-overlapping rows: (image, box mask)."""
    height, width = size
    canvas = np.full((height, width, 3), int(rng.integers(215, 256)), np.uint8)
    mask = np.zeros((height, width), bool)
    y = int(rng.integers(4, 20))
    for line in lines:
        scale = min(1.0, (width - 16) / line.shape[1], 40 / line.shape[0])
        h, w = max(8, int(line.shape[0] * scale)), max(8, int(line.shape[1] * scale))
        if y + h > height - 4:
            break
        resized = np.asarray(Image.fromarray(line).resize((w, h), Image.BILINEAR))
        x = int(rng.integers(4, max(5, width - w - 4)))
        canvas[y:y + h, x:x + w] = np.minimum(canvas[y:y + h, x:x + w], resized)
        ink = resized.min(axis=2) < 128  # the box of the ink, not of the line's margins
        if ink.any():
            rows, cols = np.where(ink.any(axis=1))[0], np.where(ink.any(axis=0))[0]
            mask[y + rows[0]:y + rows[-1] + 1, x + cols[0]:x + cols[-1] + 1] = True
        y += h + int(rng.integers(6, 30))
    return canvas, mask


def det_input(image: np.ndarray) -> np.ndarray:
    return ((image.astype(np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1)


class Det:
    def __init__(self, model, eval_count, calib_count):
        texts, lines = make_lines(eval_count * 6, seed=6)
        _, calib_lines = make_lines(calib_count * 6, seed=7, exclude=set(texts))
        rng = np.random.default_rng(8)
        pages = [page(rng, lines[i * 6:(i + 1) * 6]) for i in range(eval_count)]
        self.x = np.stack([det_input(p) for p, _ in pages])
        self.masks = np.stack([m for _, m in pages])
        xs = np.stack([det_input(page(rng, calib_lines[i * 6:(i + 1) * 6])[0]) for i in range(calib_count)])
        self.calib = [xs[i:i + 4] for i in range(0, len(xs), 4)]

    def metric(self, model) -> float:
        run = session(model)
        name = run.get_inputs()[0].name
        pred = np.concatenate([run.run(None, {name: self.x[i:i + 4]})[0][:, 0] > 0.3 for i in range(0, len(self.x), 4)])
        tp = float((pred & self.masks).sum())
        precision, recall = tp / max(pred.sum(), 1), tp / max(self.masks.sum(), 1)
        return 100.0 * 2 * precision * recall / max(precision + recall, 1e-12)


# --- magika -----------------------------------------------------------------------------------------

# File extension -> magika's label, for types whose files this machine holds in numbers.
MAGIKA_TYPES = {".py": "python", ".json": "json", ".html": "html", ".css": "css", ".js": "javascript",
                ".md": "markdown", ".xml": "xml", ".sh": "shell", ".yaml": "yaml", ".toml": "toml",
                ".rst": "rst", ".c": "c", ".cpp": "cpp", ".png": "png", ".gz": "gzip", ".so": "elf",
                ".txt": "txt", ".svg": "svg", ".ini": "ini", ".pem": "pem"}


def magika_features(path: Path, beg: int = 1024, end: int = 1024, block: int = 4096, pad: int = 256) -> np.ndarray:
    """magika 1.0's features of a file: the first ``beg`` bytes after stripping leading whitespace of
    the first ``block`` bytes (padded after), the last ``end`` bytes of the last ``block`` bytes after
    stripping trailing whitespace (padded before); int32 ``[beg + end]``."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(min(block, size)).lstrip()[:beg]
        f.seek(size - min(block, size))
        tail = f.read(min(block, size)).rstrip()
    tail = tail[len(tail) - end:] if len(tail) > end else tail
    first = list(head) + [pad] * (beg - len(head))
    last = [pad] * (end - len(tail)) + list(tail)
    return np.array(first + last, dtype=np.int32)


class Magika:
    """Content types of files on this machine (Python's library, /usr/share, /usr/include, ...), the
    label from the file's extension; calibration and evaluation files disjoint (by path hash)."""

    def __init__(self, model, eval_count, calib_count):
        import hashlib
        import json as json_module

        config = json_module.loads((model_path("magika").parent / "config.min.json").read_text())
        self.labels = config["target_labels_space"]
        per_type = max(1, (eval_count + calib_count) // len(MAGIKA_TYPES))
        found: dict[str, list[Path]] = {}
        roots = [Path(sys.prefix), Path("/usr/share"), Path("/usr/include"), Path("/usr/lib"), Path("/etc")]
        for root in roots:
            for path in sorted(root.rglob("*")) if root.exists() else []:
                kind = MAGIKA_TYPES.get(path.suffix)
                if kind and len(found.setdefault(kind, [])) < 4 * per_type and path.is_file() \
                        and not path.is_symlink() and path.stat().st_size >= 64:
                    found[kind].append(path)
        evaluation, calibration = [], []
        for kind, paths in sorted(found.items()):
            for path in paths:
                side = int(hashlib.sha256(str(path).encode()).hexdigest(), 16) % 3
                (calibration if side == 0 else evaluation).append((path, kind))
        rng = np.random.default_rng(9)
        evaluation = [evaluation[i] for i in rng.permutation(len(evaluation))[:eval_count]]
        calibration = [calibration[i] for i in rng.permutation(len(calibration))[:calib_count]]
        self.x = np.stack([magika_features(p) for p, _ in evaluation])
        self.truth = np.array([self.labels.index(kind) for _, kind in evaluation])
        xs = np.stack([magika_features(p) for p, _ in calibration])
        self.calib = [xs[i:i + 16] for i in range(0, len(xs), 16)]

    def metric(self, model) -> float:
        run = session(model)
        scores = np.concatenate([run.run(None, {"bytes": self.x[i:i + 256]})[0] for i in range(0, len(self.x), 256)])
        return 100.0 * float((scores.argmax(axis=1) == self.truth).mean())


TASKS = {"rec": (Rec, 120, 96), "cls": (Cls, 200, 160), "det": (Det, 16, 24), "magika": (Magika, 600, 192)}


def bench(name: str, max_errors: list[float], methods: list[str], holdout: bool = False, order: str = "size",
          eval_count: int | None = None, calib_count: int | None = None, pad_channels: bool = False,
          error_metric: str = "l2", recover: int = 0, recover_lr: float = 1e-3) -> dict:
    """``holdout``: twice the calibration data, every other batch given to the pruner as ``--holdout``
    (so that choosing and verifying each see as many samples as fitting), instead of one batch in four.
    ``eval_count`` / ``calib_count``: evaluation / calibration samples instead of ``TASKS``' numbers."""
    started = time.time()
    path = model_path(name)
    model = onnx.load(path)
    task_type, default_eval, default_calib = TASKS[name]
    eval_count, calib_count = eval_count or default_eval, calib_count or default_calib
    task = task_type(model, eval_count, calib_count * (2 if holdout else 1))
    folder = Path(tempfile.mkdtemp(prefix=f"prune-bench-{name}-"))
    input_name = model.graph.input[0].name
    held = folder / "holdout"
    held.mkdir()
    for index, x in enumerate(task.calib):
        np.savez((held if holdout and index % 2 else folder) / f"{index:03d}.npz", **{input_name: x})
    calibration = Calibration(model, folder)
    held_out = Calibration(model, held) if holdout else None
    dense = task.metric(model)
    log(f"{name}: dense {METRIC[name]} {dense:.2f}")
    rows = []
    runs = [(m, None) for m in methods] + [("auto", e) for e in max_errors]
    for method, budget in runs:
        t0 = time.time()
        try:
            # Under a budget the head is a candidate like any layer (the greedy leaves it dense if it costs too much).
            options = PruneOptions(method=method, max_error=budget, prune_head=budget is not None, order=order,
                                   pad_channels=pad_channels, error_metric=error_metric if budget is not None else "l2",
                                   recover=recover, recover_lr=recover_lr)
            pruned, report = prune_model(model, options, calibration, holdout=held_out)
        except OnnxSparseError as exc:
            rows.append({"method": method, "max_error": budget, "error": str(exc)})
            log(f"{name} {method} E={budget}: {exc}")
            continue
        seconds = time.time() - t0
        value = task.metric(pruned)
        methods = {}
        for layer in report.layers:
            methods[layer.method] = methods.get(layer.method, 0) + 1
        # held_out: the verification data's error when held-out data chose (auto, --max-error), which no
        # choice saw; selection: the error on the held-out data that chose (the one E bounds).
        selection = report.output_error_selection
        row = {"method": method, "max_error": budget, "layers": len(report.layers),
               "share": report.pruned_params / report.total_params, "metric": value, "delta": value - dense,
               "held_out": report.output_error.rel_l2, "fit": report.output_error_fit.rel_l2,
               "selection": selection.rel_l2 if selection else None,
               "held_out_flips": report.output_error.flips, "error_metric": options.error_metric,
               "seconds": seconds, "methods": methods, "trace": report.selection, "recovery": report.recovery}
        rows.append(row)
        log(f"{name} {method} E={budget} ({options.error_metric}): {row['layers']} layers, {row['share']:.1%} in 2:4, "
            f"{value:.2f} ({row['delta']:+.2f}), held-out {row['held_out']:.4f}, flips {row['held_out_flips']:.4f}, "
            f"fit {row['fit']:.4f}, {seconds:.0f}s" + (f"; {report.recovery['note']}" if report.recovery else ""))
    return {"model": FILES[name], "metric": METRIC[name], "dense": dense, "eval": eval_count,
            "calib": calib_count, "holdout": calib_count if holdout else None, "rows": rows, "seconds": time.time() - started, "left_dense": left_dense(model, pad_channels),
            "pad_channels": pad_channels}


def left_dense(model: onnx.ModelProto, pad_channels: bool = False) -> dict:
    """Why the ineligible Conv/MatMul/Gemm weights are ineligible: parameters and layers per reason
    (head excluded: with --prune-head it is a candidate)."""
    from onnxsparse.prune.layers import scan_layers, weight_params

    scan = scan_layers(model, prune_head=True, pad_channels=pad_channels)
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    sizes.update({node.output[0]: int(np.prod(attr.t.dims)) for node in model.graph.node if node.op_type == "Constant"
                  for attr in node.attribute if attr.name == "value"})
    reasons: dict[str, dict] = {}
    for skipped in scan.skipped:
        entry = reasons.setdefault(skipped.reason, {"layers": 0, "params": 0, "examples": []})
        entry["layers"] += 1
        entry["params"] += sizes.get(skipped.weight, 0)
        if len(entry["examples"]) < 3:
            entry["examples"].append(skipped.node)
    eligible = sum(layer.params for layer in scan.layers)
    return {"total_params": weight_params(model), "eligible_params": eligible, "reasons": reasons}


def _recover_steps(record: dict) -> int:
    """The --recover steps of the record's rows (0: one-shot)."""
    return max([(r.get("recovery") or {}).get("steps", 0) for m in record["models"] for r in m["rows"]], default=0)


def markdown(record: dict) -> str:
    lines = ["# One-shot 2:4 pruning on third-party models", "",
             f"Command: `{record['command']}`; {record['seconds'] / 60:.1f} min in all on "
             f"{record['environment']['cpus']} shared CPU cores (AMD EPYC, Zen 4 class), onnxruntime "
             f"{record['environment']['onnxruntime']}. Models from `{PACKAGE}=={VERSION}` (magika: `magika==1.0.3`); "
             "evaluation data rendered (magika: files of this machine), disjoint from calibration; calibration split by the pruner into fit (3/4) and held-out (1/4) batches; "
             "when held-out data chooses (auto, --max-error) it is split again: half chooses (selection rel. L2, "
             "bounded by E), half verifies (held-out rel. L2, seen by no choice). "
             "All eligible layers, head kept dense except in the `--max-error` rows (`--prune-head`: the greedy may take it), "
             + (f"then `--recover {recovered}` (the pruned model distilled towards the dense one on the fit data, "
                "pruned zeros kept; the selection rel. L2 is after it)." if (recovered := _recover_steps(record))
                else "no fine-tuning."), ""]
    for result in record["models"]:
        lines += [f"## {result['model']} ({result['metric']}; {result['eval']} eval, {result['calib']} calibration samples)",
                  "", f"Dense: **{result['dense']:.2f}**", "",
                  "| method | --max-error | layers | weights in 2:4 | metric | Δ vs dense | held-out rel. L2 | selection rel. L2 | fit rel. L2 | prune s | methods chosen |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for row in result["rows"]:
            budget = "-" if row["max_error"] is None else f"{row['max_error']:g}"
            if "error" in row:
                lines.append(f"| {row['method']} | {budget} | 0 | - | - | - | - | - | - | - | {row['error']} |")
                continue
            chosen = ", ".join(f"{k} x{v}" for k, v in sorted(row["methods"].items()))
            selected = "-" if row.get("selection") is None else f"{row['selection']:.4f}"
            lines.append(f"| {row['method']} | {budget} | {row['layers']} | {row['share']:.1%} | {row['metric']:.2f} "
                         f"| {row['delta']:+.2f} | {row['held_out']:.4f} | {selected} | {row['fit']:.4f} | {row['seconds']:.0f} | {chosen} |")
        lines.append("")
        dense_left = result.get("left_dense")
        if dense_left and dense_left["reasons"]:
            total = dense_left["total_params"]
            lines += [f"Eligible (head included): {dense_left['eligible_params'] / total:.1%} of "
                      f"{total:,} Conv/MatMul/Gemm weights. Left dense:", ""]
            lines += [f"- {entry['layers']} layer(s), {entry['params'] / total:.1%} of the weights: {reason} "
                      f"(e.g. {', '.join(entry['examples'])})" for reason, entry in dense_left["reasons"].items()]
            lines.append("")
    lines += [f"Pearson correlation between held-out relative L2 and the metric's drop over all pruned rows: "
              f"**{record['correlation']['held_out']:.2f}** (fit-data error: {record['correlation']['fit']:.2f}; "
              f"n = {record['correlation']['n']}).", ""]
    return "\n".join(lines)


def correlation(models: list[dict], key: str) -> float:
    pairs = [(row[key], -row["delta"]) for m in models for row in m["rows"]
             if "error" not in row and row.get(key) is not None and np.isfinite(row[key])]
    if len(pairs) < 3:
        return float("nan")
    x, y = np.array(pairs).T
    return float(np.corrcoef(x, y)[0, 1])


# --- pruning at scale ------------------------------------------------------------------------------


def write_dense_mlp(path: Path, layers: int = 16, hidden: int = 4096, ffn: int = 11008, seed: int = 0) -> int:
    """A dense fp32 chain of MatMuls ``W[hidden, ffn]`` (+ Relu) / ``W[ffn, hidden]`` with every weight
    in ``<path>.data``, written 16 MB at a time (the generator never holds a whole weight); returns
    the data file's size. 16 layers of 4096 x 11008: 2.9 GB."""
    rng = np.random.default_rng(seed)
    data_path = path.with_name(path.name + ".data")
    inits, nodes, x, offset = [], [], "x", 0
    with open(data_path, "wb") as data:
        for index in range(layers):
            k, n = (hidden, ffn) if index % 2 == 0 else (ffn, hidden)
            rows_per_block = max(1, (4 << 20) // n)
            for first in range(0, k, rows_per_block):
                count = min(rows_per_block, k - first)
                block = rng.standard_normal((count, n), dtype=np.float32) * np.float32(np.sqrt(2.0 / k))
                data.write(memoryview(block.reshape(-1)).cast("B"))
            tensor = onnx.TensorProto(name=f"w{index}", data_type=onnx.TensorProto.FLOAT, dims=[k, n])
            for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(k * n * 4))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.data_location = onnx.TensorProto.EXTERNAL
            inits.append(tensor)
            offset += k * n * 4  # a multiple of 64: no padding
            out = "y" if index == layers - 1 else f"h{index}"
            nodes.append(onnx.helper.make_node("MatMul", [x, f"w{index}"], [out], name=f"fc{index}"))
            x = out
            if index % 2 == 0 and index < layers - 1:
                nodes.append(onnx.helper.make_node("Relu", [out], [f"r{index}"], name=f"relu{index}"))
                x = f"r{index}"
    graph = onnx.helper.make_graph(nodes, "dense_mlp", [onnx.helper.make_tensor_value_info("x", 1, ["batch", hidden])],
                                   [onnx.helper.make_tensor_value_info("y", 1, ["batch", hidden if layers % 2 == 0 else ffn])],
                                   inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return offset


def big(folder: Path, methods: list[str], samples: int, device: str, include: list[str] = ()) -> dict:
    """Generate the 2.9 GB model in ``folder`` (or reuse the one there), prune it with each method
    through the CLI (a child process each: wall time and peak RSS from ``os.wait4``; ``include``:
    only these layers, e.g. one of each shape), delete the outputs and the model."""
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "dense_mlp.onnx"
    data = model.with_name(model.name + ".data")
    t0 = time.time()
    if model.is_file() and data.is_file() and data.stat().st_size == 16 * 4096 * 11008 * 4:
        size = data.stat().st_size
        log(f"big: reusing {model}")
    else:
        size = write_dense_mlp(model)
        log(f"big: wrote {model} ({size / 1e9:.2f} GB) in {time.time() - t0:.0f}s")
    rows = []
    try:
        for method in methods:
            out = folder / f"pruned_{method}.onnx"
            command = [sys.executable, "-m", "onnxsparse", "prune", str(model), "-o", str(out), "--method", method,
                       "--prune-head", "--json", "-q", "--device", device]
            if method != "magnitude":
                command += ["--calib-samples", str(samples), "--batch-size", str(max(1, samples // 4))]
            for pattern in include:
                command += ["--include", pattern]
            started = time.time()
            with open(folder / "stdout", "w") as stdout, open(folder / "stderr", "w") as stderr:
                child = subprocess.Popen(command, stdout=stdout, stderr=stderr)
                _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS
                child.returncode = os.waitstatus_to_exitcode(status)
            seconds = time.time() - started
            if child.returncode:
                raise SystemExit(f"prune --method {method} failed: {(folder / 'stderr').read_text().strip()[-300:]}")
            report = json.loads((folder / "stdout").read_text())
            row = {"method": method, "seconds": seconds, "peak_rss_gib": usage.ru_maxrss / 2**20,
                   "user_s": usage.ru_utime, "system_s": usage.ru_stime, "layers": len(report["layers"]),
                   "pruned_params": report["pruned_params"], "total_params": report["total_params"],
                   "output_error": report["output_error"], "device": device,
                   "samples": samples if method != "magnitude" else 0, "include": list(include)}
            rows.append(row)
            log(f"big {method}: {seconds:.0f}s, peak RSS {row['peak_rss_gib']:.2f} GiB, {row['layers']} layers")
            for path in folder.glob(f"pruned_{method}.onnx*"):
                path.unlink()
    finally:
        for path in folder.glob("dense_mlp.onnx*"):
            path.unlink()
    return {"model_bytes": size, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="rec,cls,det")
    parser.add_argument("--max-errors", default="0.05,0.1")
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt,auto",
                        help="methods run on all eligible layers without a budget (comma-separated; may be empty)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--holdout", action="store_true",
                        help="render as many held-out samples as calibration samples and pass them as --holdout")
    parser.add_argument("--order", default="size", choices=("size", "ratio"),
                        help="the greedy's order under --max-error (prune --order)")
    parser.add_argument("--error-metric", default="l2", choices=("l2", "flips"),
                        help="what --max-errors bound (prune --error-metric)")
    parser.add_argument("--eval-count", type=int, metavar="N",
                        help="evaluation samples per model instead of the task's default (rec 120, cls 200, det 16, magika 600)")
    parser.add_argument("--calib-count", type=int, metavar="N",
                        help="calibration samples per model instead of the task's default (rec 96, cls 160, det 24, "
                             "magika 192; doubled by --holdout)")
    parser.add_argument("--pad-channels", action="store_true",
                        help="prune --pad-channels: group-1 Convs with C not a multiple of 4 pruned as if zero-padded")
    parser.add_argument("--recover", type=int, default=0, metavar="STEPS",
                        help="prune --recover: distil each pruned model towards the dense one for STEPS steps")
    parser.add_argument("--recover-lr", type=float, default=1e-3, help="prune --recover-lr")
    parser.add_argument("--big", metavar="FOLDER",
                        help="instead: prune a generated 2.9 GB model (16 MatMuls 4096x11008 fp32, external data) "
                             "in FOLDER with --big-methods; print wall time and peak RSS as JSON (files deleted after)")
    parser.add_argument("--big-methods", default="magnitude,sparsegpt")
    parser.add_argument("--big-samples", type=int, default=256, help="calibration samples (random) for sparsegpt")
    parser.add_argument("--device", default="auto", help="prune --device for --big")
    parser.add_argument("--big-include", default="", help="--big: prune only these layers (comma-separated)")
    args = parser.parse_args()
    for option, value in (("--eval-count", args.eval_count), ("--calib-count", args.calib_count)):
        if value is not None and value < 1:
            raise SystemExit(f"{option} must be a positive number of samples, got {value}")
    if args.big:
        record = big(Path(args.big), [m for m in args.big_methods.split(",") if m], args.big_samples, args.device,
                     [p for p in args.big_include.split(",") if p])
        print(json.dumps(record, indent=2))
        return 0
    out = Path(args.out)
    if not out.is_dir():
        raise SystemExit(f"{out}: output folder does not exist")
    started = time.time()
    budgets = [float(v) for v in args.max_errors.split(",") if v]
    methods = [m for m in args.methods.split(",") if m]
    models = [bench(name, budgets, methods, args.holdout, args.order, args.eval_count, args.calib_count,
                    args.pad_channels, args.error_metric, args.recover, args.recover_lr)
              for name in args.models.split(",") if name]
    record = {"models": models, "seconds": time.time() - started,
              "command": shlex.join(["python", "benchmarks/prune_bench.py", *sys.argv[1:]]),  # as given
              "correlation": {"held_out": correlation(models, "held_out"), "fit": correlation(models, "fit"),
                              "held_out_flips": correlation(models, "held_out_flips"),
                              "n": sum(1 for m in models for r in m["rows"] if "error" not in r)},
              "environment": {"onnxruntime": ort.__version__, "numpy": np.__version__,
                              "python": platform.python_version(), "cpus": os.cpu_count()}}
    (out / "prune_bench.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "prune_bench.md").write_text(markdown(record))
    log(f"wrote {out / 'prune_bench.md'} in {record['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
