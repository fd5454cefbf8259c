"""The onnxsparse compiler: passes on onnx-graphsurgeon (see ``graph.ModelGraph``).

``compile_pipeline`` runs ``CheckSparsity`` (looks only) -> ``RewriteSparseOps`` (rules, trusts the
check's records; folds a following BatchNormalization) -> ``FuseActivation`` -> ``FoldOutputCast`` -> ``FoldCompress`` -> ``AnnotateShapes``
(shapes for what ONNX Runtime cannot infer through the custom ops) -> ``KeepFp16Kernels``. Layer discovery (``layers.find_layers``) is shared with the pruner.
The passes work in If/Loop/Scan bodies too (``ModelGraph.scopes``; layers there carry their ``scope``);
layers in local functions are reported, not rewritten (inline the functions first).

The compiler imports only the leaves (``spec``, ``format``, ``errors``), onnx, graphsurgeon and
numpy: never ONNX Runtime, never the front door.
"""

from ..spec import SUPPORTED_DTYPES, TARGET_OPS
from .annotate_shapes import AnnotateResult, AnnotateShapes
from .eligibility import CheckResult, CheckSparsity
from .fold_compress import DeferredPairs, FoldCompress, FoldedWeight, FoldResult
from .fold_output_cast import FoldCastResult, FoldedCast, FoldOutputCast
from .fuse_activation import FuseActivation, FuseResult
from .graph import ModelGraph
from .keep_fp16 import KeepFp16Kernels, KeepFp16Result
from .nhwc_chains import NhwcChains, NhwcResult
from .layers import LayerRecord, find_layers
from .pipeline import DensePolicy, LayerPolicy, Pass, PassError, PassResult, Pipeline, PipelineResult, as_policy
from .rewrite_sparse_ops import CompressedWeight, LayerDecision, RewriteResult, RewriteSparseOps
from .rules import RULES, Match, Rule


def compile_pipeline(fold: bool = True, policy: LayerPolicy | DensePolicy | None = None,
                     sink: DeferredPairs | None = None, pad_channels: bool = False,
                     conv_layout: str = "nchw") -> Pipeline:
    """The compile passes in order; ``policy`` may keep eligible layers dense; ``sink``: where
    ``FoldCompress`` leaves the large pairs for the save to compute (a streaming compile);
    ``pad_channels``: zero-pad a group-1 Conv's input channels to a multiple of 4 (``channel_padding``);
    ``conv_layout="nhwc"``: run chains of sparse convs in NHWC (``nhwc_chains``)."""
    policy = as_policy(policy)
    passes = [CheckSparsity(pad_channels), RewriteSparseOps(policy), FuseActivation(), FoldOutputCast()]
    if conv_layout == "nhwc":
        passes.append(NhwcChains())
    elif conv_layout != "nchw":
        raise ValueError(f"conv_layout must be 'nchw' or 'nhwc', got {conv_layout!r}")
    if fold:
        passes.append(FoldCompress(sink))
    passes.append(AnnotateShapes())
    passes.append(KeepFp16Kernels())  # reads the output ranks AnnotateShapes found
    return Pipeline(passes, policy=policy)


__all__ = [
    "AnnotateResult",
    "AnnotateShapes",
    "CheckResult",
    "CheckSparsity",
    "CompressedWeight",
    "DeferredPairs",
    "DensePolicy",
    "FoldCastResult",
    "FoldCompress",
    "FoldOutputCast",
    "FoldedCast",
    "FoldResult",
    "FoldedWeight",
    "KeepFp16Kernels",
    "KeepFp16Result",
    "LayerDecision",
    "LayerPolicy",
    "LayerRecord",
    "Match",
    "ModelGraph",
    "NhwcChains",
    "NhwcResult",
    "Pass",
    "PassError",
    "PassResult",
    "Pipeline",
    "PipelineResult",
    "RULES",
    "RewriteResult",
    "RewriteSparseOps",
    "Rule",
    "SUPPORTED_DTYPES",
    "TARGET_OPS",
    "compile_pipeline",
    "find_layers",
]
