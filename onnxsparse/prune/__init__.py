"""Pruning dense ONNX models to N:M (2:4 by default) along SPEC's sparse axis.

- ``layers``: which Conv/MatMul/Gemm weights may be pruned, their layouts, and why others may not.
- ``calibration``: input batches from ``.npz`` files or from the model's input specs.
- ``capture``: each layer's input Hessian X^T X, accumulated while ONNX Runtime runs the model.
- ``methods``: magnitude, Wanda and SparseGPT on a ``[rows, K]`` matrix.
- ``pruner``: ``prune_model`` (sequential, layer blocks in graph order) and its report.
- ``sensitivity``: per-layer output error and greedy choice under ``--max-error``.
"""

from .calibration import Calibration
from .layers import Layer, Skipped, scan_layers
from .methods import METHODS
from .pruner import PruneOptions, PruneReport, prune_model
from .sensitivity import layer_sensitivity

__all__ = ["METHODS", "Calibration", "Layer", "PruneOptions", "PruneReport", "Skipped", "layer_sensitivity",
           "prune_model", "scan_layers"]
