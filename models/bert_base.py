"""A BERT-base-sized encoder with 2:4 projection weights: ``build_transformer`` at BERT-base's sizes.

12 layers, hidden 768, FFN 3072, 12 heads, GELU (Erf form, as exporters write it), fp32 by default;
input ``tokens`` ``[batch, seq, 768]`` (token embeddings; batch and seq symbolic). About 340 MB in
fp32, so it is generated on demand, never bundled:

    python -m models.bert_base OUT.onnx [--dtype float16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "models"  # noqa: A001

import onnx  # noqa: E402

from .transformer import build_transformer  # noqa: E402

BERT_BASE = {"hidden": 768, "ffn": 3072, "layers": 12, "heads": 12}


def build_bert_base(dtype: str = "float32", seed: int = 0, layers: int = 12) -> onnx.ModelProto:
    """The encoder at BERT-base's sizes (``layers`` fewer for quick runs)."""
    return build_transformer(dtype, seed, **{**BERT_BASE, "layers": layers})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    parser.add_argument("--layers", type=int, default=12)
    args = parser.parse_args(argv)
    from onnxsparse.io import save_model

    save_model(build_bert_base(args.dtype, layers=args.layers), args.output, external_data=False)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
