"""Per-layer choice from measurements that belong to the machine the model is compiled for.

For each eligible layer, in this order:

1. a tuned measurement of the layer's problem in the cache, under the key of that machine
   (``source="tuned"``); a layer whose activation shape is not static (a symbolic batch without
   ``--dim``) uses every tuned shape of its problem and must be faster at each;
2. a shipped table (``onnxsparse/data/perf_<provider>.json``) whose ``hardware`` entry matches the
   machine's hardware (``source="table"``), decided as the table's rows say (``targets.decide``);
3. otherwise the layer stays dense: "not measured on <machine>: run onnxsparse tune"
   (``source="none"``). A table measured on other hardware is never applied.

Then the whole-model check that ``tune`` recorded for this model on this machine (``source=
"whole-model"``): the layers it found to cost end to end stay dense.

A tuned layer runs sparse when its measured ratio (dense / sparse, medians of interleaved runs) is
at least ``MIN_SPEEDUP`` and the lower quartile of that ratio (over resamples of the runs) is above
1, and on CUDA when it saves at least ``MIN_SAVING_US`` per call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..hardware import HardwareKey, describe, matches_hardware

# CPU: 3% over dense. A custom op between two dense layers costs ONNX Runtime a fusion or a layout
# reorder that a single-layer time does not fully show; a smaller margin is within noise anyway.
MIN_SPEEDUP = {"cpu": 1.03, "cuda": 1.10}
MIN_SAVING_US = {"cpu": 0.0, "cuda": 4.0}


@dataclass
class LayerChoice:
    node: str
    sparse: bool
    reason: str
    source: str  # "tuned", "table", "none", "whole-model", "forced"
    ratio: float | None = None  # dense / sparse as measured for this layer's problem
    saved_us: float | None = None  # per call, dense minus sparse
    problem: str | None = None
    machine: str | None = None  # the key id the measurement belongs to

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def judge(measurement: dict, provider: str) -> tuple[bool, str]:
    """Whether one tuned measurement says sparse, and the sentence that says why."""
    ratio, low = measurement["ratio"], measurement.get("ratio_low", measurement["ratio"])
    saved = measurement["dense_us"] - measurement["sparse_us"]
    need = MIN_SPEEDUP[provider]
    figures = (f"{ratio:.2f}x (quartiles {low:.2f}-{measurement.get('ratio_high', ratio):.2f}), "
               f"{measurement['dense_us']:.1f} -> {measurement['sparse_us']:.1f} us")
    if ratio < need:
        what = "slower than dense" if ratio < 1.0 else f"under the {need:.2f}x a sparse layer needs"
        return False, f"tuned here: {figures}: {what}"
    if low <= 1.0:
        return False, f"tuned here: {figures}: not clearly faster (the ratio's lower quartile is not above 1)"
    if saved < MIN_SAVING_US[provider]:
        return False, f"tuned here: {figures}: saves {saved:.1f} us per call, under {MIN_SAVING_US[provider]:g} us"
    return True, f"tuned here: {figures}"


def choose_tuned(node: str, problem, tuned: dict, provider: str, machine: str) -> LayerChoice | None:
    """The choice from the tuned records (``cache.layers(key)``), or None when none covers the problem."""
    if problem.static:
        record = tuned.get(problem.key)
        records = [record] if record is not None else []
    else:
        records = [r for r in tuned.values() if r.get("base") == problem.base and _fits(problem.x, r["problem"]["x"])]
    if not records:
        return None
    verdicts = [(r, *judge(r, provider)) for r in records]
    losing = [v for v in verdicts if not v[1]]
    record, sparse, reason = min(losing or verdicts, key=lambda v: v[0]["ratio"])
    if len(records) > 1:
        reason += f" (the {'slowest' if losing else 'least'} of {len(records)} tuned shapes, x={_shape(record)})"
    return LayerChoice(node, sparse, reason, "tuned", record["ratio"], record["dense_us"] - record["sparse_us"],
                       record.get("key", problem.key), machine)


def _fits(pattern: tuple, shape: list) -> bool:
    return len(pattern) == len(shape) and all(not isinstance(p, int) or p == s for p, s in zip(pattern, shape))


def _shape(record: dict) -> str:
    return "x".join(map(str, record["problem"]["x"]))


def table_for(provider: str, key: HardwareKey, table: dict | None) -> tuple[bool, str]:
    """Whether the shipped ``table`` (its JSON) may be used for ``key``, and a phrase naming it."""
    if not table:
        return False, f"no shipped {provider} table"
    hardware = table.get("hardware") or {}
    if not matches_hardware(key, hardware):
        return False, f"the shipped {provider} table was measured on {describe(hardware) if hardware else 'unkeyed hardware'}"
    return True, f"shipped {provider} table ({describe(hardware)})"


def not_measured(node: str, key: HardwareKey, why_not_table: str) -> LayerChoice:
    return LayerChoice(
        node, False, f"not measured on {key.short}: run onnxsparse tune ({why_not_table})", "none", machine=key.id
    )


def whole_model_override(choice: LayerChoice, verdict: dict) -> LayerChoice:
    """A layer the whole-model check dropped: dense, with the end-to-end figures that decided it."""
    reason = (f"kept dense by the whole-model check: with it sparse the model ran {verdict['ratio_before']:.2f}x of "
              f"dense end to end, without the dropped layers {verdict['ratio']:.2f}x (per layer: {choice.reason})")
    return LayerChoice(choice.node, False, reason, "whole-model", choice.ratio, choice.saved_us, choice.problem,
                       choice.machine)
