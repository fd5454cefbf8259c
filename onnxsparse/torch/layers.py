"""Which modules of a model get an N:M mask, and why the others do not.

A layer is an ``nn.Linear`` or an ``nn.Conv2d`` whose name matches the include patterns and none
of the exclude patterns (fnmatch on the qualified module name, as in ``model.named_modules()``).
It is masked when its K (in_features, or in_channels/groups) is a multiple of M, and of 4 when
the pattern is one the compiler can take (``masks.compilable``); otherwise it is skipped with the
reason, e.g. ``K=3 (in_channels/groups) is not a multiple of 4``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn

from onnxsparse.torch.masks import CONV2D, LINEAR, compilable, required_multiple


@dataclass
class Layer:
    """One Linear/Conv2d of the model: masked (``reason`` None) or skipped with the reason."""

    name: str
    module: nn.Module
    kind: str  # masks.LINEAR or masks.CONV2D
    k: int
    reason: str | None = None

    @property
    def masked(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict:
        return {"layer": self.name, "kind": self.kind, "k": self.k, "masked": self.masked, "reason": self.reason}


def layer_kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return LINEAR
    if isinstance(module, nn.Conv2d):
        return CONV2D
    return None


def find_layers(
    model: nn.Module, n: int, m: int, include: tuple[str, ...] = ("*",), exclude: tuple[str, ...] = ()
) -> list[Layer]:
    """Every Linear/Conv2d the patterns select, in ``named_modules`` order, masked or skipped."""
    layers = []
    multiple = required_multiple(n, m)
    for name, module in model.named_modules():
        kind = layer_kind(module)
        if kind is None:
            continue
        if not any(fnmatch.fnmatchcase(name, p) for p in include) or any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        k = int(module.weight.shape[1])
        axis = "in_features" if kind == LINEAR else "in_channels/groups"
        reason = None
        if k % m:
            reason = f"K={k} ({axis}) is not a multiple of M={m}"
        elif k % multiple:
            reason = f"K={k} ({axis}) is not a multiple of 4, which the compiler's 2:4 groups need"
        layers.append(Layer(name, module, kind, k, reason))
    return layers


def pattern_note(n: int, m: int) -> str | None:
    """A warning for an N:M pattern whose masks the 2:4 compiler cannot take, else None."""
    if compilable(n, m):
        return None
    return (f"{n}:{m} masks are not 2:4 along SPEC's axis (a group of 4 can hold more than 2 non-zeros): "
            "onnxsparse compile will leave these layers dense")
