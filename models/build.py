"""Write every sample model into a folder: ``python -m models.build OUTDIR``.

Also ``python models/build.py OUTDIR``. ``--update-sample`` regenerates the bundled sample
``models/samples/tiny_transformer.onnx`` (tests check that it equals what the generator produces).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "models"  # noqa: A001

import onnx  # noqa: E402

from onnxsparse.errors import OnnxSparseError  # noqa: E402
from onnxsparse.io import save_model  # noqa: E402

from .convnet import build_convnet  # noqa: E402
from .external import save_external  # noqa: E402
from .transformer import build_tiny_transformer, build_transformer  # noqa: E402

BUNDLED_SAMPLE = Path(__file__).resolve().parent / "samples" / "tiny_transformer.onnx"

# file name -> generator of an in-memory model (weights embedded)
EMBEDDED: dict[str, Callable[[], onnx.ModelProto]] = {
    "transformer.onnx": lambda: build_transformer("float32"),
    "transformer_fp16.onnx": lambda: build_transformer("float16"),
    "tiny_transformer.onnx": lambda: build_tiny_transformer("float32"),
    "convnet.onnx": lambda: build_convnet("float32"),
    "convnet_fp16.onnx": lambda: build_convnet("float16"),
}
# file name -> dtype of the MLP written with external data (<name>.data beside it)
EXTERNAL = {"mlp_external.onnx": "float32", "mlp_external_fp16.onnx": "float16"}


def build_all(outdir: str | Path) -> list[Path]:
    """Write all sample models into ``outdir`` (created if missing); return the files written."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, build in EMBEDDED.items():
        written += save_model(build(), outdir / name, external_data=False)
    for name, dtype in EXTERNAL.items():
        written += save_external(outdir / name, dtype)
    return written


def write_bundled_sample(path: str | Path = BUNDLED_SAMPLE) -> list[Path]:
    """Regenerate the committed sample."""
    return save_model(build_tiny_transformer("float32"), path, external_data=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.build", description=__doc__.splitlines()[0])
    parser.add_argument("outdir", nargs="?", help="folder to write the sample models into")
    parser.add_argument("--update-sample", action="store_true", help=f"regenerate {BUNDLED_SAMPLE.name}")
    args = parser.parse_args(argv)
    if not args.outdir and not args.update_sample:
        parser.error("give OUTDIR, --update-sample, or both")
    try:
        written = (write_bundled_sample() if args.update_sample else []) + (build_all(args.outdir) if args.outdir else [])
    except (OnnxSparseError, OSError) as exc:
        print(f"models.build: error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"{path}  ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
