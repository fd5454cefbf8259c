"""Wanda's calibration-aware score: |w| times the L2 norm of the input that w multiplies.

Forward pre-hooks on the masked layers accumulate the squared inputs over calibration batches:

- ``nn.Linear``: ``sum(x[..., k]**2)`` over every leading axis, one value per in_feature k.
- ``nn.Conv2d`` (zero padding): the input that weight ``[oc, c, kh, kw]`` multiplies is the
  input channel ``g*C/groups + c`` shifted by (kh, kw), so its squared norm is
  ``unfold(x**2)`` summed over batch and output positions (padding contributes zeros): one value
  per (input channel, kh, kw). With another padding mode the per-channel norm over N, H, W is
  used for every (kh, kw).

The score of ``weight[oc, c, kh, kw]`` is ``|w| * sqrt(norm2[group(oc) * C/groups + c, kh, kw])``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from onnxsparse.torch.masks import CONV2D, LINEAR

Forward = Callable[[nn.Module, Any], Any]


def default_forward(model: nn.Module, batch: Any) -> Any:
    """Call the model on a batch: a tensor, a tuple/list of positional inputs, or a dict of keywords."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _squared_input(module: nn.Module, kind: str, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().float()
    if kind == LINEAR:
        return x.pow(2).reshape(-1, x.shape[-1]).sum(dim=0)
    kh, kw = module.kernel_size
    if module.padding_mode == "zeros" and not isinstance(module.padding, str):
        if x.dim() == 3:
            x = x.unsqueeze(0)
        cols = F.unfold(x.pow(2), (kh, kw), dilation=module.dilation, padding=module.padding, stride=module.stride)
        # cols: [N, C*KH*KW, L], rows in (c, kh, kw) order
        return cols.sum(dim=(0, 2)).reshape(x.shape[1], kh, kw)
    per_channel = x.pow(2).transpose(0, -3).reshape(x.shape[-3], -1).sum(dim=1)
    return per_channel[:, None, None].expand(-1, kh, kw).contiguous()


def input_norms(
    model: nn.Module,
    layers: dict[str, tuple[nn.Module, str]],
    batches: Iterable[Any],
    forward: Forward = default_forward,
) -> dict[str, torch.Tensor]:
    """Squared input norms of each named layer ``{name: (module, kind)}`` over the batches.

    The model runs in eval mode without gradients; its mode is restored afterwards.
    A layer that saw no input is missing from the result.
    """
    sums: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name: str, module: nn.Module, kind: str):
        def hook(_module, args, kwargs=None):
            x = args[0] if args else next(iter((kwargs or {}).values()))
            part = _squared_input(module, kind, x)
            sums[name] = part if name not in sums else sums[name] + part

        return hook

    for name, (module, kind) in layers.items():
        handles.append(module.register_forward_pre_hook(hook_for(name, module, kind)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                forward(model, batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return sums


def wanda_scores(weight: torch.Tensor, module: nn.Module, kind: str, norm2: torch.Tensor) -> torch.Tensor:
    """|w| * ||x|| per element of ``weight`` (the layer's dense weight), from ``input_norms``'s sums."""
    weight = weight.detach()
    scale = norm2.to(weight.device).sqrt()
    if kind == LINEAR:
        return weight.abs().float() * scale[None, :]
    if kind == CONV2D:
        oc, cg = weight.shape[:2]
        per_group = oc // module.groups
        # scale: [C, KH, KW] -> [groups, C/groups, KH, KW] -> one row per output channel's group
        grouped = scale.reshape(module.groups, cg, *scale.shape[1:])
        per_oc = grouped.repeat_interleave(per_group, dim=0)
        return weight.abs().float() * per_oc
    raise ValueError(f"unknown layer kind {kind!r}")
