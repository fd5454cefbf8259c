"""Arguments shared by the commands that run an original model beside its compiled form."""

from __future__ import annotations

import argparse

from ..session import PROVIDERS


def add_model_pair_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("original", help="the dense model")
    parser.add_argument("compiled", help="the model `onnxsparse compile` wrote from it")
    parser.add_argument("--inputs", help=".npz file (or directory of them) keyed by input name; default: random inputs")
    parser.add_argument("--batch-size", type=int, default=1, help="batch size for dynamic batch dimensions (default 1)")
    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu", help="execution provider (default cpu)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
