"""Sparse training in PyTorch that exports straight into the compiler (``pip install "onnxsparse[torch]"``).

::

    import onnxsparse.torch as ost

    sparsifier = ost.prepare(model, ost.SparsityConfig(n=2, m=4))   # masks on every Linear/Conv2d
    for x, y in loader:                                              # your own loop
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        sparsifier.step()                                            # warm-up / mask schedule
    sparsifier.finalize()                                            # exact zeros, plain weights
    ost.export(model, (x,), "model.onnx")                            # raises unless all compile

Masks run along SPEC's sparse axis (``masks``), are chosen by magnitude or Wanda
(``calibration``), fixed or SR-STE (``sparsifier``); ``export`` checks the result with the
compiler (``export``). The guide is docs/torch.md.
"""

from __future__ import annotations

try:
    import torch as _torch  # noqa: F401  (PyTorch; this package's modules never shadow it)
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('onnxsparse.torch needs PyTorch: pip install "onnxsparse[torch]"') from exc

from onnxsparse.torch.calibration import input_norms, wanda_scores
from onnxsparse.torch.export import ExportReport, LayerExport, SparseExportError, check_export, export, masked_modules
from onnxsparse.torch.layers import Layer, find_layers
from onnxsparse.torch.masks import compilable, magnitude_mask, nm_mask, weight_mask
from onnxsparse.torch.sparsifier import NMMask, Sparsifier, SparsityConfig, finalize, prepare, srste_weight

__all__ = [
    "ExportReport",
    "Layer",
    "LayerExport",
    "NMMask",
    "SparseExportError",
    "Sparsifier",
    "SparsityConfig",
    "check_export",
    "compilable",
    "export",
    "finalize",
    "find_layers",
    "input_norms",
    "magnitude_mask",
    "masked_modules",
    "nm_mask",
    "prepare",
    "srste_weight",
    "wanda_scores",
    "weight_mask",
]
