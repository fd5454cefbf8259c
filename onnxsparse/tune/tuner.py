"""``tune_model``: measure a model's layers on this machine, then check the whole model.

1. Bind the inputs' dimensions (``--dim``, ``--input-shapes``), infer every tensor's shape, and
   describe each eligible layer as a ``Problem``; layers with equal problems are timed once.
2. For each problem not yet in the cache under this machine's key: a single-layer dense model (with
   the bias and the following activation as in the model, several independent instances when one is
   too small to time), the same model compiled, both timed interleaved (``timing.time_pair``). On
   CUDA the sparse session runs with the cuSPARSELt tuning cache on, so the configuration search
   happens here and the first inference of the compiled model finds it.
3. The whole-model check: compile with the per-layer choices, time dense against compiled end to
   end. While compiled is not clearly faster (the ratio or its lower quartile under 1), drop the
   sparse layers that save least per call, a quarter of them a round. The model stays dense when
   the result is under MIN_GAIN, or when the layers left are predicted (from their per-layer
   savings) to save under that: a measured gain would then be noise. The dropped layers are
   recorded under the model's fingerprint and shapes, which ``compile --target`` reads back.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from ..errors import OnnxSparseError
from ..hardware import HardwareKey, host_key
from .cache import TuneCache
from .choice import LayerChoice
from .policy import MeasuredPolicy, model_fingerprint, shapes_text
from .problems import (
    bind_inputs,
    compiled_layer_model,
    copies_for,
    distinct,
    find_problems,
    inferred_shapes,
    layer_feeds,
    layer_model,
    layer_weight_bytes,
    model_weight_bytes,
    observe_shapes,
    ort_fused_adds,
    working_set_copies,
)
from ..session import timing_options
from .timing import Timing, open_pair, time_pair

# The whole model counts as slower than dense when its ratio (medians of interleaved runs) is under 1
# (not widened by the measured spread: on a loaded machine that would excuse real losses). A compiled
# model that ends up less than MIN_GAIN faster than dense is not worth the risk of noise: the
# model then stays dense (exactly dense speed).
MIN_GAIN = 1.01
MAX_ROUNDS = 6


@dataclass
class TunedProblem:
    key: str
    layers: list[str]
    record: dict | None  # the cache record (None: could not be timed)
    cached: bool = False
    error: str | None = None


@dataclass
class TuneResult:
    machine: HardwareKey
    cache_path: str
    problems: list[TunedProblem] = field(default_factory=list)
    whole_model: dict | None = None
    choices: dict[str, LayerChoice] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            "machine": self.machine.to_dict() | {"id": self.machine.id},
            "cache": self.cache_path,
            "problems": [{"problem": p.key, "layers": p.layers, "cached": p.cached, "error": p.error,
                          **({k: p.record[k] for k in ("dense_us", "sparse_us", "ratio", "ratio_low", "ratio_high",
                                                       "pairs", "copies")} if p.record else {})}
                         for p in self.problems],
            "whole_model": self.whole_model,
            "layers": {node: c.to_dict() for node, c in self.choices.items()},
            "seconds": round(self.seconds, 1),
        }


class Progress:
    """One updating line on stderr when it is a terminal (and not quiet); nothing otherwise."""

    def __init__(self, quiet: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.on = not quiet and hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, text: str, done: bool = False) -> None:
        if self.on:
            self.stream.write("\r\033[K" + text[:160] + ("\n" if done else ""))
            self.stream.flush()


def tune_model(
    model: onnx.ModelProto,
    provider: str = "cpu",
    threads: int = 0,
    dims: dict[str, int] | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    cache: TuneCache | None = None,
    budget_s: float = 1.0,
    whole_model: bool = True,
    whole_budget_s: float = 8.0,
    retune: bool = False,
    cpu_isa: str | None = None,
    progress: Callable[..., None] | None = None,
    name: str = "",
    spinning: bool = True,
    pad_channels: bool = False,
) -> TuneResult:
    start = time.perf_counter()
    progress = progress or (lambda *a, **k: None)
    cache = cache if cache is not None else TuneCache.load()
    key = host_key(provider, threads, cpu_isa, spinning)
    runtime = {"cpu_isa": cpu_isa} if cpu_isa else {}
    if provider == "cuda":
        runtime["cusparselt_tune"] = "search"  # the search runs here and lands in the cuSPARSELt cache file

    def options():
        return timing_options(threads, runtime, spinning=spinning)

    clock = timing_clock(provider, threads)

    from ..api import check_model

    bound = bind_inputs(model, dims or {}, input_shapes, require_static=True)
    fingerprint = model_fingerprint(model)
    recorded = (cache.model(key, fingerprint) or {}).get("fused_adds")
    if recorded is not None and not retune:  # learnt by an earlier tune of this model on this machine key
        fused_adds = set(recorded)
    else:
        fused_adds = ort_fused_adds(model, provider, options)
    if fused_adds is not None:  # recorded first: the whole-model check and compile --target find the same problems
        previous = cache.model(key, fingerprint) or {}
        cache.put_model(key, fingerprint, {**previous, "name": name, "fused_adds": sorted(fused_adds)})
    layers = find_problems(model, check_model(model, pad_channels=pad_channels).layers, inferred_shapes(bound),
                           fused_adds)
    observed = {}
    if any(not layer.problem.static for layer in layers):
        observed = observe_shapes(bound, layers, model_feeds(bound), model)
    groups = distinct(layers)
    weight_bytes = model_weight_bytes(model)
    result = TuneResult(machine=key, cache_path=str(cache.path))
    for index, (problem, members) in enumerate(groups.items(), 1):
        names = [m.node for m in members]
        label = f"[{index}/{len(groups)}] {problem.key}"
        existing = cache.layer(key, problem.key)
        if existing is not None and not retune:
            result.problems.append(TunedProblem(problem.key, names, existing, cached=True))
            progress(f"{label}: {existing['ratio']:.2f}x (cached)", done=True)
            continue
        if not problem.static:
            result.problems.append(TunedProblem(problem.key, names, None, error="activation shape not known"))
            progress(f"{label}: skipped, activation shape not known", done=True)
            continue
        progress(f"{label}: timing ...")
        try:
            record = measure_problem(members[0], provider, options, budget_s, clock, weight_bytes=weight_bytes)
        except OnnxSparseError as exc:
            result.problems.append(TunedProblem(problem.key, names, None, error=str(exc)))
            progress(f"{label}: not timed: {exc}", done=True)
            continue
        cache.put_layer(key, problem.key, record)
        cache.save()
        result.problems.append(TunedProblem(problem.key, names, record))
        progress(f"{label}: {record['ratio']:.2f}x ({record['dense_us']:.0f} -> {record['sparse_us']:.0f} us, "
                 f"{record['pairs']} pairs)", done=True)

    policy = MeasuredPolicy(provider, key, cache, dims, input_shapes, use_model_verdict=False,
                            layer_shapes=observed, pad_channels=pad_channels)
    run = {"layer_shapes": observed} if observed else {}
    if whole_model:
        result.whole_model = check_whole_model(model, bound, policy, provider, options, whole_budget_s, progress,
                                               clock)
        run.update(result.whole_model)
    if run or fused_adds is not None:
        previous = cache.model(key, fingerprint) or {}
        runs = {**previous.get("runs", {}), **({shapes_text(bound): run} if run else {})}
        cache.put_model(key, fingerprint, {**previous, "name": name, "runs": runs})
        cache.save()
    final = MeasuredPolicy(provider, key, cache, dims, input_shapes, pad_channels=pad_channels)
    _compile(model, final)
    result.choices = final.choices
    result.seconds = time.perf_counter() - start
    return result


def timing_clock(provider: str, threads: int) -> str:
    """CPU time of the calling thread where ONNX Runtime computes on it (CPU, one intra-op thread):
    immune to the other jobs of a shared machine. Wall time otherwise."""
    return "cpu" if provider == "cpu" and threads == 1 else "wall"


def measure_problem(layer, provider: str, options, budget_s: float, clock: str = "wall",
                    weight_bytes: int = 0) -> dict:
    """Time one problem: a dense model of copies of the layer against what the compiler makes of it.
    On CPU the copies hold about the ``weight_bytes`` of the model the layer comes from
    (``working_set_copies``), so that the weights come from the cache level they would in it."""
    problem = layer.problem
    copies = copies_for(problem)
    if provider == "cpu" and weight_bytes:
        copies = max(copies, working_set_copies(problem, weight_bytes))
    dense = layer_model(layer, copies)
    sparse = compiled_layer_model(dense, pad_channels=bool(problem.padded))
    dense_s, sparse_s = open_pair(dense, sparse, provider, options)
    timing = time_pair(dense_s, sparse_s, layer_feeds(problem), budget_s=budget_s, per=copies, clock=clock,
                       provider=provider)
    return {"problem": problem.to_dict(), "base": problem.base, "key": problem.key, "copies": copies,
            "weight_bytes": copies * layer_weight_bytes(problem), "clock": clock, **timing.to_dict()}


def model_feeds(bound: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the bound shapes (floats normal, integers zero: token ids, lengths)."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in bound.graph.initializer}
    feeds = {}
    for value in bound.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        shape = [d.dim_value for d in tensor_type.shape.dim]
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[value.name] = np.zeros(shape, dtype)
    return feeds


def _compile(model: onnx.ModelProto, policy) -> onnx.ModelProto:
    from ..api import compile_model

    return compile_model(model, policy=policy, pad_channels=policy.pad_channels).model


def check_whole_model(model, bound, policy: MeasuredPolicy, provider: str, options, budget_s: float,
                      progress, clock: str = "wall") -> dict:
    """Dense against compiled end to end; drop the layers that cost until compiled is not slower."""
    feeds = model_feeds(bound)
    dense_blob = model.SerializeToString()
    compiled = _compile(model, policy)
    sparse_layers = [c for c in policy.choices.values() if c.sparse]
    verdict = {"sparse_layers": len(sparse_layers), "dense_layers": [], "rounds": [], "clock": clock}
    if not sparse_layers:
        verdict.update(ratio_before=1.0, ratio=1.0, note="no layer measured faster: the model stays dense")
        return verdict
    progress(f"whole model: {len(sparse_layers)} layers sparse, timing dense against compiled ...")
    timing = _time_models(dense_blob, compiled.SerializeToString(), feeds, provider, options, budget_s, clock)
    verdict.update(ratio_before=timing.ratio, dense_ms=timing.dense_us / 1e3, compiled_ms_before=timing.sparse_us / 1e3)
    predicted = _predicted(timing.dense_us, sparse_layers)
    verdict["predicted_ratio"] = round(predicted, 4)
    if predicted < MIN_GAIN:
        # The layers cannot matter end to end; a measured gain would be noise, a loss is real risk.
        saved = sum(c.saved_us or 0.0 for c in sparse_layers)
        verdict.update(dense_layers=[c.node for c in sparse_layers], ratio=1.0, compiled_ms=verdict["dense_ms"],
                       note=f"the sparse layers save {saved:.0f} us per run together, {predicted:.3f}x of the "
                            f"model's {timing.dense_us / 1e3:.2f} ms: under {MIN_GAIN:.2f}x, the model stays dense")
        verdict["rounds"].append(_round(timing, len(sparse_layers)))
        return verdict
    verdict["rounds"].append(_round(timing, len(sparse_layers)))
    progress(f"whole model: {timing.ratio:.3f}x with {len(sparse_layers)} layers sparse "
             f"(quartiles {timing.ratio_low:.3f}-{timing.ratio_high:.3f})", done=True)
    # Weakest first: the layers that save least per call pay least for what they break around them.
    order = sorted(sparse_layers, key=lambda c: (c.saved_us if c.saved_us is not None else 0.0, c.ratio or 0.0))
    dropped: list[str] = []
    rounds = 0
    while _slower(timing) and order and rounds < MAX_ROUNDS and _predicted(timing.dense_us, order) >= MIN_GAIN:
        rounds += 1
        count = len(order) if rounds == MAX_ROUNDS else max(1, math.ceil(len(order) / 4))
        dropped += [c.node for c in order[:count]]
        order = order[count:]
        if not order:
            break
        trial = MeasuredPolicy(policy.provider, policy.key, policy.cache, policy.dims, policy.input_shapes,
                               force_dense=[_escape(n) for n in dropped], use_model_verdict=False,
                               layer_shapes=policy.layer_shapes)
        compiled = _compile(model, trial)
        progress(f"whole model: dropping {len(dropped)} layers, timing ...")
        timing = _time_models(dense_blob, compiled.SerializeToString(), feeds, provider, options, budget_s, clock)
        verdict["rounds"].append(_round(timing, len(order)))
        progress(f"whole model: {timing.ratio:.3f}x with {len(order)} layers sparse", done=True)
    if timing.ratio < MIN_GAIN or _slower(timing) or not order or _predicted(timing.dense_us, order) < MIN_GAIN:
        dropped = [c.node for c in sparse_layers]
        verdict["note"] = (f"not {MIN_GAIN:.2f}x faster than dense end to end with any subset tried "
                           f"(best {max(r['ratio'] for r in verdict['rounds']):.3f}x): the model stays dense")
        verdict.update(ratio=1.0, compiled_ms=verdict["dense_ms"])
    else:
        verdict.update(ratio=timing.ratio, compiled_ms=timing.sparse_us / 1e3)
    verdict["dense_layers"] = dropped
    return verdict


def _escape(name: str) -> str:
    return "".join(f"[{ch}]" if ch in "*?[]" else ch for ch in name)


def _round(timing: Timing, sparse: int) -> dict:
    return {"sparse_layers": sparse, "ratio": round(timing.ratio, 4), "ratio_low": round(timing.ratio_low, 4),
            "ratio_high": round(timing.ratio_high, 4), "pairs": timing.pairs}


def _slower(timing: Timing) -> bool:
    """Slower than dense, or not clearly faster: the lower quartile of the ratio is under 1."""
    return timing.ratio < 1.0 or timing.ratio_low < 1.0


def _predicted(dense_us: float, layers) -> float:
    """The whole model's ratio if each sparse layer saved what it measured alone."""
    saved = sum(c.saved_us or 0.0 for c in layers)
    return dense_us / max(dense_us - saved, 1e-9)


def _time_models(dense: bytes, sparse: bytes, feeds, provider, options, budget_s, clock="wall") -> Timing:
    dense_s, sparse_s = open_pair(dense, sparse, provider, options)
    return time_pair(dense_s, sparse_s, feeds, budget_s=budget_s, min_pairs=7, target_spread=0.01, clock=clock,
                     provider=provider)
