"""``compile --target cpu|cuda|host``: the compiler's per-layer policy from this machine's measurements.

``MeasuredPolicy`` is called by ``compile_model`` with each eligible layer (a ``LayerRecord``) and
returns None (rewrite it) or the reason it stays dense; ``choices`` keeps, for every layer, the
``LayerChoice`` with the measurement that decided it, for the report. See ``choice`` for the order
(tuned here, a shipped table keyed to this hardware, else dense) and ``tuner`` for the measurements.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from importlib import resources

import onnx

from ..errors import OnnxSparseError
from ..hardware import HardwareKey, host_key, host_provider
from . import choice as choices
from .cache import TuneCache
from .problems import bind_inputs, find_problems, inferred_shapes

try:  # the compiler prepares a policy of its own kind once, with the source model
    from ..compiler import LayerPolicy as _PolicyBase
except ImportError:  # a compiler that calls prepare() on any policy that has it
    _PolicyBase = object


def load_shipped_table(provider: str) -> dict | None:
    """The JSON of ``onnxsparse/data/perf_<provider>.json`` (None when not shipped)."""
    try:
        return json.loads(resources.files("onnxsparse").joinpath("data", f"perf_{provider}.json").read_text())
    except (FileNotFoundError, OSError):
        return None


def model_fingerprint(model: onnx.ModelProto) -> str:
    """The model's structure (nodes, their inputs, outputs and attributes; initializer names, types
    and shapes), not its weight values: tune and compile of one model agree on it."""
    digest = hashlib.sha256()
    for node in model.graph.node:
        digest.update(f"{node.op_type}|{node.domain}|{node.name}|{','.join(node.input)}|{','.join(node.output)}\n".encode())
    for tensor in model.graph.initializer:
        digest.update(f"{tensor.name}|{tensor.data_type}|{list(tensor.dims)}\n".encode())
    return digest.hexdigest()[:16]


def shapes_text(model: onnx.ModelProto) -> str:
    """The graph inputs' shapes as one line: "x=1x3x48x320 y=?x4"."""
    parts = []
    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
                for d in value.type.tensor_type.shape.dim]
        parts.append(f"{value.name}={'x'.join(dims)}")
    return " ".join(parts)


def resolve_target(target: str, threads: int = 0, cpu_isa: str | None = None,
                   hardware: str | None = None, cache: TuneCache | None = None) -> tuple[str, HardwareKey]:
    """(provider, key) for ``--target`` (``host``: this machine's provider) and ``--hardware``.

    ``hardware``: compile for another machine: a key id of the cache (or a unique part of one), or
    the ``id`` of a shipped table's hardware entry.
    """
    provider = host_provider() if target == "host" else target
    if provider not in ("cpu", "cuda"):
        raise OnnxSparseError(f"unknown target {target!r}; expected cpu, cuda or host")
    if not hardware:
        return provider, host_key(provider, threads, cpu_isa)
    known = [k for k in (cache.machines() if cache else []) if k.provider == provider]
    exact = [k for k in known if k.id == hardware]
    found = exact or [k for k in known if hardware in k.id]
    if len(found) == 1:
        return provider, found[0]
    table = load_shipped_table(provider) or {}
    described = table.get("hardware") or {}
    if described.get("id") == hardware:
        return provider, table_key(provider, described)
    if len(found) > 1:
        raise OnnxSparseError(f"--hardware {hardware!r} matches {len(found)} tuned machines; give more of the key "
                              f"(`onnxsparse tune --list` lists them)")
    listed = [k.id for k in known] + ([described["id"]] if described.get("id") else [])
    raise OnnxSparseError(f"--hardware {hardware!r} names no tuned machine and no shipped {provider} table"
                          + (f" (known: {'; '.join(listed)})" if listed else ""))


def table_key(provider: str, described: dict) -> HardwareKey:
    """A key for the machine a shipped table describes (its hardware fields; no tuned entry has it)."""
    fields = {k: v for k, v in described.items() if k in HardwareKey.__dataclass_fields__ and k != "provider"}
    return HardwareKey(provider=provider, **fields)


class MeasuredPolicy(_PolicyBase):
    """The per-layer choice of ``compile --target`` for one machine key."""

    def __init__(self, provider: str, key: HardwareKey, cache: TuneCache | None = None,
                 dims: dict[str, int] | None = None, input_shapes: dict[str, list[int]] | None = None,
                 force_sparse: list[str] | None = None, force_dense: list[str] | None = None,
                 use_model_verdict: bool = True, table: dict | None = None, layer_shapes: dict | None = None,
                 pad_channels: bool = False):
        self.provider, self.key = provider, key
        self.cache = cache
        self.dims, self.input_shapes = dict(dims or {}), dict(input_shapes or {})
        self.force_sparse, self.force_dense = list(force_sparse or []), list(force_dense or [])
        self.use_model_verdict = use_model_verdict
        self.pad_channels = pad_channels  # --pad-channels: the zero-padded Convs are problems too
        # node -> activation shape observed by tune where shape inference gives none
        self.layer_shapes = dict(layer_shapes or {})
        self.table = load_shipped_table(provider) if table is None else table
        self.table_ok, self.table_phrase = choices.table_for(provider, key, self.table)
        self.problems: dict = {}
        self.choices: dict[str, choices.LayerChoice] = {}
        self.verdict: dict | None = None
        self.fingerprint = ""
        self.shapes = ""

    # compile_model calls prepare(model) before it looks at the layers.
    def prepare(self, model: onnx.ModelProto) -> None:
        from ..api import check_model

        bound = bind_inputs(model, self.dims, self.input_shapes, require_static=False)
        self.shapes = shapes_text(bound)
        self.fingerprint = model_fingerprint(model)
        entry = self.cache.model(self.key, self.fingerprint) if self.cache is not None else None
        fused = set(entry["fused_adds"]) if entry and "fused_adds" in entry else None  # what tune saw ONNX Runtime fuse
        layers = find_problems(model, check_model(model, pad_channels=self.pad_channels).layers,
                               inferred_shapes(bound), fused)
        self.problems = {layer.node: layer for layer in layers}
        if self.cache is not None:
            run = self._model_run()
            if run and not self.layer_shapes:
                self.layer_shapes = run.get("layer_shapes", {})
            if self.use_model_verdict and run and "ratio" in run:
                self.verdict = run
        for node, shape in self.layer_shapes.items():
            layer = self.problems.get(node)
            if layer is not None and not layer.problem.static:
                layer.problem = replace(layer.problem, x=tuple(shape))

    def _model_run(self) -> dict | None:
        entry = self.cache.model(self.key, self.fingerprint)
        if not entry:
            return None
        runs = entry.get("runs", {})
        if self.shapes in runs:
            return runs[self.shapes]
        if runs and _symbolic(self.shapes):  # shapes not bound: what any tuned shape dropped stays dense
            dropped = sorted({n for run in runs.values() for n in run.get("dense_layers", [])})
            worst = min(runs.values(), key=lambda r: r.get("ratio_before", 1.0))
            return {**worst, "dense_layers": dropped, "layer_shapes": {}}
        return None  # tuned at other shapes only

    def __call__(self, record) -> str | None:
        node = record.node
        if _matches(self.force_dense, node, record.op):
            self.choices[node] = choices.LayerChoice(node, False, "kept dense by --force-dense", "forced")
            return self.choices[node].reason
        if _matches(self.force_sparse, node, record.op):
            self.choices[node] = choices.LayerChoice(node, True, "rewritten by --force-sparse", "forced")
            return None
        made = self.decide(record)
        if made.sparse and self.verdict and node in self.verdict.get("dense_layers", []):
            made = choices.whole_model_override(made, self.verdict)
        self.choices[node] = made
        return None if made.sparse else made.reason

    def decide(self, record) -> choices.LayerChoice:
        layer = self.problems.get(record.node)
        if layer is None and getattr(record, "padded_channels", None):
            return choices.LayerChoice(record.node, False, "a Conv on zero-padded channels: its measurement "
                                       "needs `onnxsparse tune --pad-channels`", "none")
        if layer is None:
            return choices.LayerChoice(record.node, False, "not a top-level layer the tuner can describe", "none")
        if self.cache is not None:
            tuned = choices.choose_tuned(record.node, layer.problem, self.cache.layers(self.key), self.provider,
                                         self.key.id)
            if tuned is not None:
                return tuned
        if self.table_ok:
            return self._from_table(record, layer)
        return choices.not_measured(record.node, self.key, self.table_phrase)

    def _from_table(self, record, layer) -> choices.LayerChoice:
        from ..targets import bias_pass_us, decide

        problem = layer.problem
        m, k, n = gemm_shape(problem, layer.output_shape)
        extra = 0.0
        if m is not None and problem.op == "MatMul" and problem.bias:
            extra = bias_pass_us(self.provider, m, n, 2 if problem.dtype != "float32" else 4)
        op = "conv" if problem.op == "Conv" else "gemm"
        decision = decide(self.provider, problem.dtype, k, n, m, op, extra)
        return choices.LayerChoice(record.node, decision.sparse, f"{self.table_phrase}: {decision.reason}", "table",
                                   problem=problem.key, machine=(self.table or {}).get("hardware", {}).get("id"))

    def report(self) -> dict:
        return {
            "provider": self.provider,
            "machine": self.key.to_dict() | {"id": self.key.id},
            "shapes": self.shapes,
            "table": self.table_phrase,
            "whole_model": self.verdict,
            "layers": {node: c.to_dict() for node, c in self.choices.items()},
        }


def _symbolic(shapes: str) -> bool:
    return any(not part.isdigit() for text in shapes.split() for part in text.partition("=")[2].split("x"))


def _matches(patterns, name: str, op: str) -> bool:
    from ..compiler.layers import matches

    return matches(patterns, name, op)


def gemm_shape(problem, output_shape=None) -> tuple[int | None, int, int]:
    """(m, k, n) of the GEMM the layer runs (a Conv as its implicit GEMM per group); m None when unknown."""
    attrs = dict(problem.attrs)
    w = problem.weight
    static = problem.static
    if problem.op == "Conv":
        group = int(attrs.get("group", 1))
        k, n = math.prod(w[1:]), w[0] // max(group, 1)
        m = None
        if output_shape and len(output_shape) == 4 and all(isinstance(d, int) for d in output_shape):
            m = output_shape[0] * output_shape[2] * output_shape[3]
        return m, k, n
    if problem.op == "Gemm" and attrs.get("transB", 0):
        n, k = w
    else:
        k, n = w
    if not static:
        return None, k, n
    if problem.op == "Gemm" and attrs.get("transA", 0):
        return problem.x[1], k, n
    return (math.prod(problem.x[:-1]) if len(problem.x) > 1 else 1), k, n
