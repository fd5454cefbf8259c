"""The pass infrastructure: ``Pass``, ``PassResult``, the ``Pipeline`` that runs them in order,
and the ``LayerPolicy`` hook through which a caller keeps eligible layers dense.

In the spirit of onnx-ir's passes: a pass is an object with one entry point,
``call(model) -> PassResult(model, modified, ...)``, and says whether it may change the model
(``modifies``). A ``Pipeline`` owns the order: it prepares the policy once, runs each pass on the
model the previous one returned, and turns any failure into a ``PassError`` that names the pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, TypeVar

import onnx

from ..errors import OnnxSparseError
from .graph import ModelGraph
from .layers import LayerRecord


@dataclass
class PassResult:
    graph: ModelGraph  # the model the pass worked on (and changed, when ``modified``)
    modified: bool

    @property
    def model(self) -> ModelGraph:
        return self.graph


class PassError(OnnxSparseError):
    """A pass failed; the message starts with the pass's name."""

    def __init__(self, pass_name: str, message: str) -> None:
        super().__init__(f"{pass_name}: {message}")
        self.pass_name = pass_name


class Pass:
    """Base of the passes: subclasses implement ``call`` and say whether they modify."""

    modifies = True

    @property
    def name(self) -> str:
        return type(self).__name__

    def call(self, graph: ModelGraph) -> PassResult:
        raise NotImplementedError

    def __call__(self, graph: ModelGraph) -> PassResult:
        result = self.call(graph)
        if result.modified and not self.modifies:
            raise PassError(self.name, "changed the model although it declares modifies=False")
        return result


class LayerPolicy:
    """Per-layer dense fallback: ``prepare(model)`` once before any layer is looked at, then
    called with each eligible ``LayerRecord``; a returned sentence keeps that layer dense and is
    reported as its reason, None rewrites it."""

    def prepare(self, model: onnx.ModelProto) -> None:
        """Look at the source model once (shapes, tables); nothing by default."""

    def __call__(self, record: LayerRecord) -> Optional[str]:
        return None


# A plain function works as a policy too.
DensePolicy = Callable[[LayerRecord], Optional[str]]


class _FunctionPolicy(LayerPolicy):
    def __init__(self, function: DensePolicy) -> None:
        self.function = function

    def __call__(self, record: LayerRecord) -> Optional[str]:
        return self.function(record)


def as_policy(policy: LayerPolicy | DensePolicy | None) -> LayerPolicy:
    if policy is None:
        return LayerPolicy()
    return policy if isinstance(policy, LayerPolicy) else _FunctionPolicy(policy)


R = TypeVar("R", bound=PassResult)


@dataclass
class PipelineResult(PassResult):
    results: list[PassResult] = field(default_factory=list)  # one per pass, in order

    def of(self, kind: type[R]) -> R:
        """The result of the pass that returns ``kind`` results."""
        return next(result for result in self.results if isinstance(result, kind))


class Pipeline(Pass):
    """Passes run in order (a ``Sequential``); the policy is prepared once before the first."""

    def __init__(self, passes: Sequence[Pass], policy: LayerPolicy | None = None) -> None:
        self.passes = list(passes)
        self.policy = policy

    @property
    def modifies(self) -> bool:  # type: ignore[override]
        return any(step.modifies for step in self.passes)

    def call(self, graph: ModelGraph) -> PipelineResult:
        if self.policy is not None:
            self.policy.prepare(graph.source)
        result = PipelineResult(graph=graph, modified=False)
        for step in self.passes:
            try:
                done = step(result.graph)
            except PassError:
                raise
            except OnnxSparseError as exc:
                raise PassError(step.name, str(exc)) from None
            except Exception as exc:  # a bug: keep the cause, name the pass
                raise PassError(step.name, f"{type(exc).__name__}: {exc}") from exc
            result.results.append(done)
            result.graph = done.graph
            result.modified = result.modified or done.modified
        return result
