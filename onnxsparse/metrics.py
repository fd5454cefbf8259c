"""The one output-error metric: how far a model's outputs are from a reference's.

``ErrorSums`` accumulates, over any number of output arrays (one output of one batch for
``onnxsparse verify``, every output of every calibration batch for the pruner), the sums behind

- relative L2 error ``||actual - expected|| / ||expected||`` (``||diff||`` when expected is zero),
- cosine similarity ``<expected, actual> / (||expected|| ||actual||)`` (1 when both are zero
  and equal, 0 when one of them is zero),
- the largest absolute difference,

in float64, over the elements where neither side is NaN and that are not the same infinity on
both sides; a NaN on one side only is counted (``nan_mismatch``). A leaf: numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class ErrorSums:
    diff: float = 0.0  # sum of (actual - expected)^2
    ref: float = 0.0  # sum of expected^2
    new: float = 0.0  # sum of actual^2
    dot: float = 0.0  # sum of expected * actual
    max_abs: float = 0.0
    nan_mismatch: bool = False  # a NaN on one side where the other has a number

    def add(self, expected: np.ndarray, actual: np.ndarray) -> "ErrorSums":
        exp = np.asarray(expected).astype(np.float64).ravel()
        act = np.asarray(actual).astype(np.float64).ravel()
        nan_exp, nan_act = np.isnan(exp), np.isnan(act)
        same_inf = np.isinf(exp) & (exp == act)  # equal infinities agree (their difference would be NaN)
        if nan_exp.any() or nan_act.any() or same_inf.any():
            self.nan_mismatch = self.nan_mismatch or bool((nan_exp != nan_act).any())
            keep = ~(nan_exp | nan_act | same_inf)
            exp, act = exp[keep], act[keep]
        delta = act - exp
        self.diff += float(delta @ delta)
        self.ref += float(exp @ exp)
        self.new += float(act @ act)
        self.dot += float(exp @ act)
        if delta.size:
            self.max_abs = max(self.max_abs, float(np.abs(delta).max()))
        return self

    @property
    def rel_l2(self) -> float:
        return math.sqrt(self.diff / self.ref) if self.ref > 0 else math.sqrt(self.diff)

    @property
    def cosine(self) -> float:
        if self.ref > 0 and self.new > 0:
            return self.dot / math.sqrt(self.ref * self.new)
        return 1.0 if self.diff == 0 else 0.0
