"""Train with N:M masks: ``prepare`` -> your training loop with ``step()`` -> ``finalize``.

``prepare(model, config)`` attaches an ``NMMask`` parametrization to the weight of every masked
layer (``layers.find_layers``): the module's ``weight`` becomes ``original * mask``, the dense
``original`` stays the trained parameter (``module.parametrizations.weight.original``).

Two modes:

- masked fine-tuning (default): the mask is fixed between updates; pruned weights get no
  gradient. Masks are chosen by magnitude or by Wanda's calibration-aware score.
- SR-STE (``srste=True``): the mask is recomputed from |original| at every forward; the backward
  pass is straight-through plus the sparse-refined term,
  ``grad(original) = grad(weight) + decay * (1 - mask) * original``, which pulls pruned weights
  toward zero so the mask settles (Zhou et al., "Learning N:M fine-grained structured sparse
  neural networks from scratch", 2021).

The schedule: ``warmup_steps`` dense steps (masks inactive), then N:M; masked fine-tuning
recomputes its masks every ``update_every`` steps after that (never, by default).
``step()`` counts one optimizer step; call it after ``optimizer.step()``.

``finalize(model)`` removes the parametrizations and writes exact zeros (+0.0) into the pruned
elements, so that the exported weight is 2:4 along SPEC's axis.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from onnxsparse.torch.calibration import Forward, default_forward, input_norms, wanda_scores
from onnxsparse.torch.layers import Layer, find_layers, pattern_note
from onnxsparse.torch.masks import check_pattern, groups_over, magnitude_mask, weight_mask

logger = logging.getLogger(__name__)

METHODS = ("magnitude", "wanda")
# Set on each module that finalize squashed: its (N, M). export() finds the masked layers by it.
MARK = "onnxsparse_nm"


@dataclass(frozen=True)
class SparsityConfig:
    """What to mask and how. Defaults: 2:4 by magnitude on every Linear/Conv2d, masks from step 0."""

    n: int = 2
    m: int = 4
    method: str = "magnitude"  # "magnitude" or "wanda" (needs calibration batches)
    srste: bool = False  # dynamic masks with the SR-STE gradient instead of fixed masks
    decay: float = 2e-4  # SR-STE's lambda_W
    warmup_steps: int = 0  # dense steps before the first mask
    update_every: int | None = None  # fixed masks: recompute every k steps after warm-up (None: once)
    include: tuple[str, ...] = ("*",)  # fnmatch patterns on module names
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_pattern(self.n, self.m)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.srste and self.method != "magnitude":
            raise ValueError("SR-STE recomputes its masks by magnitude at every forward; use method='magnitude'")
        if self.decay < 0 or self.warmup_steps < 0 or (self.update_every is not None and self.update_every < 1):
            raise ValueError("decay and warmup_steps must be >= 0 and update_every >= 1")


class _SRSTEMask(torch.autograd.Function):
    """weight * mask(|weight|) forward; grad + decay * (1 - mask) * weight backward."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, kind: str, n: int, m: int, decay: float) -> torch.Tensor:
        mask = magnitude_mask(weight, kind, n, m)
        ctx.save_for_backward(weight, mask)
        ctx.decay = decay
        return weight * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, mask = ctx.saved_tensors
        return grad + ctx.decay * (~mask) * weight, None, None, None, None


def srste_weight(weight: torch.Tensor, kind: str, n: int = 2, m: int = 4, decay: float = 2e-4) -> torch.Tensor:
    """The SR-STE sparse weight of a dense one (differentiable with SR-STE's gradient)."""
    return _SRSTEMask.apply(weight, kind, n, m, decay)


class NMMask(nn.Module):
    """Parametrization: ``original * mask`` (fixed mask) or SR-STE's dynamic mask; identity while inactive."""

    def __init__(self, shape: torch.Size, kind: str, n: int, m: int, srste: bool, decay: float, device=None):
        super().__init__()
        self.kind, self.n, self.m, self.srste, self.decay = kind, n, m, srste, decay
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool, device=device))
        self.register_buffer("active", torch.tensor(False, device=device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not bool(self.active):
            return weight
        if self.srste:
            return _SRSTEMask.apply(weight, self.kind, self.n, self.m, self.decay)
        return weight * self.mask

    def extra_repr(self) -> str:
        return f"{self.n}:{self.m} {self.kind}{', SR-STE decay=' + str(self.decay) if self.srste else ''}"


@dataclass
class Sparsifier:
    """The masked layers of a prepared model and the schedule that drives their masks."""

    model: nn.Module
    config: SparsityConfig
    layers: list[Layer]
    calibration: list[Any] | None = None
    forward: Forward = default_forward
    steps: int = 0
    mask_updates: int = 0
    norms: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def masked(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.masked]

    @property
    def skipped(self) -> list[Layer]:
        return [layer for layer in self.layers if not layer.masked]

    @property
    def active(self) -> bool:
        return self.steps >= self.config.warmup_steps

    def calibrate(self, batches: Iterable[Any], forward: Forward | None = None) -> None:
        """Keep calibration batches for Wanda's input norms (gathered again at each mask update)."""
        self.calibration = list(batches)
        if forward is not None:
            self.forward = forward

    def step(self) -> None:
        """One optimizer step done: activate masks after warm-up, refresh them on schedule."""
        self.steps += 1
        warmup, every = self.config.warmup_steps, self.config.update_every
        if self.steps == warmup:
            self.update_masks()
        elif every and self.steps > warmup and (self.steps - warmup) % every == 0 and not self.config.srste:
            self.update_masks()

    def update_masks(self) -> None:
        """Choose every masked layer's N:M mask now (magnitude or Wanda) and make the masks active."""
        cfg = self.config
        if cfg.method == "wanda":
            self._gather_norms()
        with torch.no_grad():
            for layer in self.masked:
                param = _mask_of(layer.module)
                dense = layer.module.parametrizations.weight.original
                if cfg.srste:
                    param.mask.copy_(magnitude_mask(dense, layer.kind, cfg.n, cfg.m))
                elif cfg.method == "wanda":
                    scores = wanda_scores(dense, layer.module, layer.kind, self.norms[layer.name])
                    param.mask.copy_(weight_mask(scores, layer.kind, cfg.n, cfg.m))
                else:
                    param.mask.copy_(magnitude_mask(dense, layer.kind, cfg.n, cfg.m))
                param.active.fill_(True)
        self.mask_updates += 1
        logger.info("N:M masks updated (%d layers, step %d)", len(self.masked), self.steps)

    def _gather_norms(self) -> None:
        if not self.calibration:
            raise ValueError("method='wanda' needs calibration batches: prepare(..., calibration=batches) "
                             "or sparsifier.calibrate(batches) before the masks are chosen")
        layers = {layer.name: (layer.module, layer.kind) for layer in self.masked}
        self.norms = input_norms(self.model, layers, self.calibration, self.forward)
        missing = [name for name in layers if name not in self.norms]
        if missing:
            raise ValueError(f"Wanda: no calibration input reached layer(s) {', '.join(missing)} "
                             "(a module whose forward is bypassed cannot be hooked); exclude them or use magnitude")

    def finalize(self) -> nn.Module:
        """Squash the masks into exact zeros and remove the parametrizations (see ``finalize``)."""
        if not self.active:
            raise ValueError(f"finalize before the masks are active (step {self.steps} of "
                             f"{self.config.warmup_steps} warm-up steps) would leave the model dense")
        return finalize(self.model)

    def report(self) -> list[dict]:
        """Per layer: masked or the reason it is skipped; for masked ones the share of zeros now."""
        rows = []
        for layer in self.layers:
            row = layer.to_dict()
            if layer.masked and parametrize.is_parametrized(layer.module, "weight"):
                with torch.no_grad():
                    row["zeros"] = float((layer.module.weight == 0).float().mean())
            rows.append(row)
        return rows


def prepare(
    model: nn.Module,
    config: SparsityConfig | None = None,
    calibration: Iterable[Any] | None = None,
    forward: Forward = default_forward,
    **overrides: Any,
) -> Sparsifier:
    """Attach N:M masks to a model's Linear/Conv2d weights (in place) and return the sparsifier.

    ``config`` fields may also be given as keywords (``prepare(model, n=2, m=4, srste=True)``).
    With no warm-up the masks are chosen now (one-shot pruning); Wanda then needs
    ``calibration``, an iterable of batches that ``forward(model, batch)`` runs.
    """
    config = replace(config or SparsityConfig(), **overrides)
    note = pattern_note(config.n, config.m)
    if note:
        logger.warning(note)
    layers = find_layers(model, config.n, config.m, config.include, config.exclude)
    for layer in layers:
        if not layer.masked:
            logger.info("%s left dense: %s", layer.name, layer.reason)
            continue
        if parametrize.is_parametrized(layer.module, "weight"):
            raise ValueError(f"{layer.name}.weight already has a parametrization; prepare a model once")
        weight = layer.module.weight
        mask = NMMask(weight.shape, layer.kind, config.n, config.m, config.srste, config.decay, device=weight.device)
        parametrize.register_parametrization(layer.module, "weight", mask)
    sparsifier = Sparsifier(model, config, layers, forward=forward)
    if calibration is not None:
        sparsifier.calibrate(calibration)
    if config.warmup_steps == 0:
        sparsifier.update_masks()
    return sparsifier


def _mask_of(module: nn.Module) -> NMMask | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations.weight:
        if isinstance(p, NMMask):
            return p
    return None


def _own_class(module: nn.Module) -> None:
    """Give a parametrized module a class of its own before its parametrization is removed.

    ``register_parametrization`` puts the ``weight`` property on a generated class that
    ``copy.deepcopy`` shares between the copies, and ``remove_parametrizations`` deletes the
    property from that class: finalizing one copy would break the other.
    """
    cls = module.__class__
    body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, body)


def finalize(model: nn.Module) -> nn.Module:
    """Remove every ``NMMask`` (in place) leaving the weight exactly zero where it was masked.

    Fixed masks are applied as they are; SR-STE's mask is computed once more from the dense weight.
    A pruned element is written as +0.0 (``w * 0`` would give -0.0 for a negative w; SPEC counts
    both as zero, the exported bytes are cleaner). Each squashed module gets ``module.onnxsparse_nm
    = (N, M)``, by which ``export`` finds the layers to check. Returns the model.
    """
    for name, module in model.named_modules():
        param = _mask_of(module)
        if param is None:
            continue
        if not bool(param.active):
            raise ValueError(f"{name}: its N:M mask is not active yet (dense warm-up); nothing to finalize")
        with torch.no_grad():
            dense = module.parametrizations.weight.original
            mask = magnitude_mask(dense, param.kind, param.n, param.m) if param.srste else param.mask
            sparse = torch.where(mask, dense, torch.zeros((), dtype=dense.dtype, device=dense.device))
        _own_class(module)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        with torch.no_grad():
            module.weight.copy_(sparse)
        over = groups_over(module.weight, param.kind, param.n, param.m)
        if over:  # cannot happen with masks from this module; a guard against a hand-edited mask
            raise ValueError(f"{name}: {over} groups hold more than {param.n} non-zeros after finalize")
        setattr(module, MARK, (param.n, param.m))
    return model


__all__ = [
    "NMMask",
    "SparsityConfig",
    "Sparsifier",
    "finalize",
    "prepare",
    "srste_weight",
]
