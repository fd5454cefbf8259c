"""The onnxsparse compiler passes, on onnx-graphsurgeon (see ``graph.ModelGraph``).

``VerifySparsity`` (looks only) -> ``RewriteSparseOps`` (trusts its records) -> ``FoldCompress``
-> ``AnnotateShapes`` (shapes for what ONNX Runtime cannot infer through the custom ops).
None of them descends into subgraphs (If/Loop/Scan bodies) or local functions.
"""

from .annotate_shapes import AnnotateResult, AnnotateShapes
from ..spec import SUPPORTED_DTYPES, TARGET_OPS
from .base import DensePolicy, LayerRecord, Pass, PassResult
from .fold_compress import FoldCompress, FoldedWeight, FoldResult
from .graph import ModelGraph
from .rewrite_sparse_ops import CompressedWeight, LayerDecision, RewriteResult, RewriteSparseOps
from .verify_sparsity import VerifyResult, VerifySparsity

__all__ = [
    "AnnotateResult",
    "AnnotateShapes",
    "SUPPORTED_DTYPES",
    "TARGET_OPS",
    "CompressedWeight",
    "DensePolicy",
    "FoldCompress",
    "FoldResult",
    "FoldedWeight",
    "LayerDecision",
    "LayerRecord",
    "ModelGraph",
    "Pass",
    "PassResult",
    "RewriteResult",
    "RewriteSparseOps",
    "VerifyResult",
    "VerifySparsity",
]
