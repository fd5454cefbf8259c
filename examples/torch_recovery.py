"""2:4 sparsity recovered by training, from a dense PyTorch model to a compiled ONNX model.

On scikit-learn's ``load_digits`` (1797 8x8 images, 10 classes; a fixed stratified split, 25%
held out), for a small CNN and an MLP:

1. dense: train from scratch;
2. one-shot: prune the dense model 2:4 (magnitude, and Wanda from calibration inputs), no training;
3. fine-tuned: the one-shot models trained further with their masks fixed;
4. SR-STE: trained from scratch with dynamic 2:4 masks and SR-STE's gradient;

then every sparse model is exported to ONNX (``onnxsparse.torch.export``, which fails unless the
compiler rewrites every masked layer), compiled with ``onnxsparse.api.compile_model`` and run in
ONNX Runtime through ``onnxsparse.InferenceSession``; its held-out accuracy must equal PyTorch's.

    pip install ".[torch]" scikit-learn
    python examples/torch_recovery.py [--seeds 3] [--out DIR] [--exporter dynamo|torchscript]

The training loop is written out below (``train``): the sparsifier only adds ``sparsifier.step()``.
Accuracies are means over ``--seeds`` seeds (each seed: its own initialisation and batch order);
PyTorch runs on one thread; times are the process's CPU seconds per seed (the wall clock of a
shared machine says little), the one-shot rows' time is choosing the masks.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's onnxsparse

import onnxsparse  # noqa: E402
import onnxsparse.torch as ost  # noqa: E402
from onnxsparse.api import compile_model  # noqa: E402


@dataclass
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def _split(x: np.ndarray, y: np.ndarray, test_share: float, seed: int) -> Split:
    """A stratified split, the same for every run with the same seed."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        test[idx[: int(round(len(idx) * test_share))]] = True
    mean, std = x[~test].mean(), x[~test].std()
    x = ((x - mean) / std).astype(np.float32)
    t = torch.from_numpy
    return Split(t(x[~test]), t(y[~test]).long(), t(x[test]), t(y[test]).long())


def digits(seed: int = 0) -> Split:
    """scikit-learn's 8x8 digits as [N, 1, 8, 8] float images."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return _split(data.images[:, None].astype(np.float32), data.target, 0.25, seed)


def synthetic(n: int = 1200, classes: int = 10, seed: int = 0) -> Split:
    """A digits-like task needing no download: 8x8 class templates, shifted, scaled and noisy.

    Each class is a random smooth stroke pattern; samples are the template moved by up to one
    pixel, scaled in contrast, with another class's template mixed in weakly and pixel noise.
    """
    rng = np.random.default_rng(seed)
    templates = rng.standard_normal((classes, 10, 10))
    kernel = np.array([0.25, 0.5, 0.25])
    for axis in (1, 2):  # smooth so that shifts matter
        templates = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, templates)
    y = rng.integers(0, classes, n)
    dy, dx = rng.integers(0, 3, n), rng.integers(0, 3, n)
    x = np.stack([templates[c, a:a + 8, b:b + 8] for c, a, b in zip(y, dy, dx)])
    other = templates[rng.integers(0, classes, n), 1:9, 1:9]
    x = x * rng.uniform(0.6, 1.4, (n, 1, 1)) + 0.3 * other + 0.2 * rng.standard_normal((n, 8, 8))
    return _split(x[:, None].astype(np.float32), y, 0.25, seed)


def cnn() -> nn.Module:
    # conv1 has K = C = 1: not a multiple of 4, so it stays dense (the report says why)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, groups=2), nn.ReLU(), nn.Flatten(),
        nn.Linear(32 * 4 * 4, 32), nn.ReLU(),
        nn.Linear(32, 10),
    )


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))


MODELS = {"CNN": cnn, "MLP": mlp}


def train(model: nn.Module, data: Split, epochs: int, seed: int, lr: float = 3e-3, sparsifier=None) -> None:
    """Plain Adam training; a sparsifier only adds its step() after each optimizer step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data.y_train), generator=generator)
        for batch in order.split(64):
            loss = loss_fn(model(data.x_train[batch]), data.y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if sparsifier is not None:
                sparsifier.step()
        schedule.step()
    model.eval()


def accuracy(model: nn.Module, data: Split) -> float:
    model.eval()
    with torch.no_grad():
        correct = int((model(data.x_test).argmax(dim=1) == data.y_test).sum())
    return 100.0 * correct / len(data.y_test)


def onnx_accuracy(model: nn.Module, data: Split, path: Path, dynamo: bool) -> tuple[float, int, int]:
    """Export, compile and run in ONNX Runtime: (accuracy, layers rewritten, masked layers)."""
    report = ost.export(model, (data.x_test[:1],), path, dynamo=dynamo,
                        dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamo else None,
                        **({} if dynamo else {"dynamic_axes": {"input": {0: "batch"}}, "input_names": ["input"]}))
    compiled = compile_model(path)
    session = onnxsparse.InferenceSession(compiled.model, providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: data.x_test.numpy()})[0]
    acc = 100.0 * int((logits.argmax(axis=1) == data.y_test.numpy()).sum()) / len(data.y_test)
    return acc, len(compiled.rewritten), len(report.layers)


@dataclass
class Row:
    model: str
    variant: str
    accuracy: list[float]
    epochs: int
    seconds: float
    onnx_accuracy: list[float]
    rewritten: str = ""

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracy))


def run(data: Split, arch: str, seeds: list[int], epochs: int, finetune_epochs: int, out: Path,
        dynamo: bool = True, export: bool = True) -> list[Row]:
    """The whole pipeline for one architecture; one Row per variant, accuracies per seed."""
    make = MODELS[arch]
    rows: dict[str, Row] = {}

    def record(variant, model, seed, n_epochs, seconds):
        row = rows.setdefault(variant, Row(arch, variant, [], n_epochs, 0.0, []))
        row.accuracy.append(accuracy(model, data))
        row.seconds += seconds / len(seeds)
        if export and variant != "dense":
            acc, rewritten, masked = onnx_accuracy(model, data, out / f"{arch}_{variant}_{seed}.onnx".replace(" ", "_"), dynamo)
            row.onnx_accuracy.append(acc)
            row.rewritten = f"{rewritten}/{masked}"

    calibration = list(data.x_train[:256].split(64))
    for seed in seeds:
        torch.manual_seed(seed)
        dense = make()
        t = time.process_time()
        train(dense, data, epochs, seed)
        record("dense", dense, seed, epochs, time.process_time() - t)

        for method in ("magnitude", "wanda"):
            pruned = copy.deepcopy(dense)
            t = time.process_time()
            sparsifier = ost.prepare(pruned, method=method, calibration=calibration)
            one_shot = time.process_time() - t
            record(f"one-shot {method}", sparsifier.model, seed, 0, one_shot)
            t = time.process_time()
            train(pruned, data, finetune_epochs, seed + 1000, lr=1e-3, sparsifier=sparsifier)
            sparsifier.finalize()
            record(f"fine-tuned {method}", pruned, seed, finetune_epochs, time.process_time() - t)

        torch.manual_seed(seed)
        scratch = make()
        t = time.process_time()
        sparsifier = ost.prepare(scratch, srste=True, decay=2e-4)
        train(scratch, data, epochs, seed, sparsifier=sparsifier)
        sparsifier.finalize()
        record("SR-STE from scratch", scratch, seed, epochs, time.process_time() - t)
    return list(rows.values())


def table(rows: list[Row]) -> str:
    lines = ["| model | variant | held-out accuracy | vs dense | epochs | train CPU s | ONNX Runtime accuracy | layers rewritten |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    dense = {row.model: row.mean for row in rows if row.variant == "dense"}
    for row in rows:
        onnx = f"{np.mean(row.onnx_accuracy):.2f}%" if row.onnx_accuracy else ""
        lines.append(f"| {row.model} | {row.variant} | {row.mean:.2f}% | {row.mean - dense[row.model]:+.2f} | "
                     f"{row.epochs} | {row.seconds:.1f} | {onnx} | {row.rewritten} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--finetune-epochs", type=int, default=15)
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    parser.add_argument("--data", choices=("digits", "synthetic"), default="digits")
    parser.add_argument("--out", type=Path, help="folder for the exported models (default: a temporary one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # models this small train fastest on one thread (two spin on a shared machine)
    data = digits() if args.data == "digits" else synthetic()
    start, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        rows = []
        for arch in MODELS:
            rows += run(data, arch, list(range(args.seeds)), args.epochs, args.finetune_epochs, out,
                        dynamo=args.exporter == "dynamo")
    print(table(rows))
    mismatched = [f"{r.model} {r.variant}" for r in rows if r.onnx_accuracy and r.onnx_accuracy != r.accuracy]
    print(f"\n{len(data.y_train)} training / {len(data.y_test)} held-out images, {args.seeds} seeds, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {time.perf_counter() - start:.0f} s in all "
          f"({time.process_time() - cpu:.0f} CPU s)")
    if mismatched:
        print("ONNX Runtime accuracy differs from PyTorch for: " + ", ".join(mismatched))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
