"""Generators of small sample models whose weights are 2:4-pruned along SPEC's sparse axis.

Each generator is a function returning an ``onnx.ModelProto`` (IR 10, opset 17), deterministic
for a given seed, with a ``dtype`` parameter (``"float32"`` or ``"float16"``):

- ``build_transformer``: a 2-layer transformer encoder (MatMul, Gemm, LayerNormalization, Softmax);
  ``build_tiny_transformer`` is its narrow variant, the bundled sample.
- ``build_convnet``: a small CNN (plain, strided, padded, dilated, grouped and depthwise Conv).
- ``build_mlp``: an MLP of MatMuls; ``save_external`` writes it with its weights in ``<name>.data``.

``bench_nets`` holds the (larger, fp16) models benchmarks/gpu_bench.py times: per-GEMM and per-conv
models, a BERT-large-like encoder and a ResNet-50-like net.

``python -m models.build OUTDIR`` writes them all; ``models/samples/`` holds the one bundled sample.
"""

from .convnet import build_convnet
from .external import build_mlp, save_external
from .transformer import build_tiny_transformer, build_transformer

__all__ = ["build_convnet", "build_mlp", "build_tiny_transformer", "build_transformer", "save_external"]
