"""Measure on this machine, decide per machine: ``onnxsparse tune`` and ``compile --target``.

- ``problems``: a model's distinct layer problems at the shapes it runs, and single-layer models.
- ``timing``: dense against sparse, interleaved, medians and the spread of the ratio.
- ``cache``: the per-machine JSON cache, keyed by ``hardware.HardwareKey``.
- ``choice``: the per-layer decision from a tuned measurement or a table of the same hardware.
- ``policy``: ``MeasuredPolicy``, the compiler's per-layer policy built on ``choice``.
- ``tuner``: ``tune_model``, the per-problem timings and the whole-model check.
"""

from .cache import TuneCache, default_path
from .choice import LayerChoice
from .policy import MeasuredPolicy, resolve_target
from .tuner import TuneResult, tune_model

__all__ = ["LayerChoice", "MeasuredPolicy", "TuneCache", "TuneResult", "default_path", "resolve_target", "tune_model"]
