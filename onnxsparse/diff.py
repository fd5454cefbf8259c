"""Structural difference of two ONNX models, for CI: ``onnxsparse diff A B``.

What is compared, in this order:

- ``ir_version`` and ``opset_import`` (per domain);
- graph inputs and outputs: by name, element type and shape (symbolic dims by name), and their order;
- nodes, in graph order: op_type, domain, inputs, outputs, attributes. Nodes are matched by name
  when every node of both graphs has a unique, non-empty name; otherwise by position, after
  aligning the two node lists (``difflib``) so that one inserted node is reported as one added
  node rather than as every later node changed;
- initializers, by name: element type, shape, and a sha256 of the content (the same values stored
  inline or in a ``.data`` file compare equal). Weights in files are hashed from the file a chunk at
  a time (``io.open_model``, ``io.tensor_chunks``): a model of any size is diffed in little memory;
- model-local functions and sparse initializers, by name, as a whole (hash of their bytes).

Subgraphs (If/Loop/Scan bodies) are graph attributes: a changed body is reported as a changed
attribute, not descended into (its hash covers its tensors' values, not where they are stored). Doc strings, producer fields, value_info and metadata are ignored.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import io
from .io import open_model

_HASH = re.compile(r"\b[0-9a-f]{64}\b")
SECTIONS = ("ir_version", "opset_import", "input", "output", "node", "initializer", "sparse_initializer", "function")


@dataclass(frozen=True)
class FieldChange:
    """One field that differs: its name and its value in A and in B (JSON-friendly)."""

    field: str
    a: Any
    b: Any

    def to_dict(self) -> dict:
        return {"field": self.field, "a": self.a, "b": self.b}


@dataclass(frozen=True)
class Difference:
    """An item (node, initializer, input, ...) added in B, removed from A, or changed."""

    section: str
    change: str  # "added" | "removed" | "changed"
    name: str
    what: str = ""  # a short description of the item, e.g. "MatMul: (x, w) -> (y)" or "float32[64, 64]"
    fields: tuple[FieldChange, ...] = ()
    position: str = ""  # nodes matched by position: "#3" (index in A, or in B when added), "#3->#4"

    def to_dict(self) -> dict:
        return {
            "section": self.section,
            "change": self.change,
            "name": self.name,
            "position": self.position,
            "what": self.what,
            "fields": [f.to_dict() for f in self.fields],
        }

    def format(self) -> str:
        mark = {"added": "+", "removed": "-", "changed": "~"}[self.change]
        label = " ".join(part for part in (self.position, f"'{self.name}'" if self.name else "") if part)
        head = f"{mark} {self.section}" + (f" {label}" if label else "") + (f" ({self.what})" if self.what else "")
        if self.change != "changed":
            return head
        return "\n".join([head + ":"] + [f"    {f.field}: {_show(f.a)} -> {_show(f.b)}" for f in self.fields])


@dataclass
class ModelDiff:
    """All differences between model A and model B; ``equal`` when there are none."""

    differences: list[Difference] = field(default_factory=list)
    a: str = "A"
    b: str = "B"
    node_matching: str = "name"  # "name" or "position"

    @property
    def equal(self) -> bool:
        return not self.differences

    def summary(self) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for d in self.differences:
            counts.setdefault(d.section, {"added": 0, "removed": 0, "changed": 0})[d.change] += 1
        return counts

    def to_dict(self) -> dict:
        return {
            "a": self.a,
            "b": self.b,
            "equal": self.equal,
            "node_matching": self.node_matching,
            "summary": self.summary(),
            "differences": [d.to_dict() for d in self.differences],
        }

    def format(self) -> str:
        header = f"--- {self.a}\n+++ {self.b}"
        if self.equal:
            return f"{header}\nmodels are structurally equal"
        counts = "; ".join(
            f"{section}: " + ", ".join(f"{n} {change}" for change, n in by_change.items() if n)
            for section, by_change in self.summary().items()
        )
        body = "\n".join(d.format() for d in self.differences)
        total = len(self.differences)
        return f"{header}\n{body}\n{total} difference{'s' if total != 1 else ''} ({counts})"


def diff_files(path_a: str | os.PathLike, path_b: str | os.PathLike) -> ModelDiff:
    """Open both models with ``onnxsparse.io.open_model`` (weights hashed from their files) and diff them."""
    result = diff_models(open_model(path_a), open_model(path_b))
    result.a, result.b = str(path_a), str(path_b)
    return result


def diff_models(a: onnx.ModelProto, b: onnx.ModelProto) -> ModelDiff:
    """Every structural difference between two models (external data loaded, or left in files by
    ``io.open_model``)."""
    result = ModelDiff()
    out = result.differences
    if a.ir_version != b.ir_version:
        out.append(Difference("ir_version", "changed", "", fields=(FieldChange("ir_version", a.ir_version, b.ir_version),)))
    out += _diff_keyed(
        "opset_import",
        {o.domain or "ai.onnx": o.version for o in a.opset_import},
        {o.domain or "ai.onnx": o.version for o in b.opset_import},
        lambda version: {"version": version},
        describe=lambda version: f"version {version}",
    )
    out += _diff_values("input", a.graph.input, b.graph.input)
    out += _diff_values("output", a.graph.output, b.graph.output)
    node_diffs, result.node_matching = _diff_nodes(list(a.graph.node), list(b.graph.node))
    out += node_diffs
    out += _diff_keyed(
        "initializer",
        {t.name: t for t in a.graph.initializer},
        {t.name: t for t in b.graph.initializer},
        _tensor_fields,
        describe=_describe_tensor,
    )
    out += _diff_keyed(
        "sparse_initializer",
        {t.values.name: t for t in a.graph.sparse_initializer},
        {t.values.name: t for t in b.graph.sparse_initializer},
        lambda t: {"sha256": _sha256(t.SerializeToString(deterministic=True))},
    )
    out += _diff_keyed(
        "function",
        {f"{f.domain}::{f.name}": f for f in a.functions},
        {f"{f.domain}::{f.name}": f for f in b.functions},
        lambda f: {"sha256": _sha256(_without_docs(f).SerializeToString(deterministic=True))},
    )
    return result


# --- generic keyed comparison -------------------------------------------------------------------


def _diff_keyed(section: str, a: dict, b: dict, fields_of, describe=lambda item: "") -> list[Difference]:
    """Compare two name -> item maps: items only in A are removed, only in B added; else field by field."""
    diffs = []
    for name in a:
        if name not in b:
            diffs.append(Difference(section, "removed", name, describe(a[name])))
    for name in b:
        if name not in a:
            diffs.append(Difference(section, "added", name, describe(b[name])))
        else:
            changes = _field_changes(fields_of(a[name]), fields_of(b[name]))
            if changes:
                diffs.append(Difference(section, "changed", name, describe(a[name]), changes))
    return diffs


def _field_changes(fa: dict, fb: dict) -> tuple[FieldChange, ...]:
    keys = list(fa) + [k for k in fb if k not in fa]
    return tuple(FieldChange(k, fa.get(k), fb.get(k)) for k in keys if fa.get(k) != fb.get(k))


# --- graph inputs and outputs -------------------------------------------------------------------


def _value_type(value: onnx.ValueInfoProto) -> str:
    t = value.type
    if t.HasField("tensor_type"):
        elem = _dtype_name(t.tensor_type.elem_type)
        if not t.tensor_type.HasField("shape"):
            return f"{elem}[?]"
        dims = [d.dim_param if d.HasField("dim_param") else (str(d.dim_value) if d.HasField("dim_value") else "?")
                for d in t.tensor_type.shape.dim]
        return f"{elem}[{', '.join(dims)}]"
    return onnx.helper.printable_type(t)


def _diff_values(section: str, a, b) -> list[Difference]:
    diffs = _diff_keyed(
        section,
        {v.name: v for v in a},
        {v.name: v for v in b},
        lambda v: {"type": _value_type(v)},
        describe=_value_type,
    )
    names_a, names_b = [v.name for v in a], [v.name for v in b]
    if set(names_a) == set(names_b) and names_a != names_b:
        diffs.append(Difference(section, "changed", "(order)", fields=(FieldChange("order", names_a, names_b),)))
    return diffs


# --- nodes --------------------------------------------------------------------------------------


def _diff_nodes(a: list[onnx.NodeProto], b: list[onnx.NodeProto]) -> tuple[list[Difference], str]:
    if _names_unique(a) and _names_unique(b):
        by_name_a = {n.name: n for n in a}
        by_name_b = {n.name: n for n in b}
        return _diff_keyed("node", by_name_a, by_name_b, _node_fields, describe=_describe_node), "name"
    return _diff_nodes_by_position(a, b), "position"


def _names_unique(nodes: list[onnx.NodeProto]) -> bool:
    names = [n.name for n in nodes]
    return all(names) and len(set(names)) == len(names)


def _diff_nodes_by_position(a: list[onnx.NodeProto], b: list[onnx.NodeProto]) -> list[Difference]:
    fields_a = [_node_fields(n) for n in a]
    fields_b = [_node_fields(n) for n in b]
    keys_a = [repr(sorted(f.items())) for f in fields_a]
    keys_b = [repr(sorted(f.items())) for f in fields_b]
    diffs = []
    matcher = difflib.SequenceMatcher(a=keys_a, b=keys_b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        paired = min(i2 - i1, j2 - j1) if tag == "replace" else 0
        for k in range(paired):  # inside a replaced stretch, pair nodes by position
            i, j = i1 + k, j1 + k
            position = f"#{i}" if i == j else f"#{i}->#{j}"
            diffs.append(Difference("node", "changed", a[i].name, _describe_node(a[i]),
                                    _field_changes(fields_a[i], fields_b[j]), position))
        for i in range(i1 + paired, i2):
            diffs.append(Difference("node", "removed", a[i].name, _describe_node(a[i]), position=f"#{i}"))
        for j in range(j1 + paired, j2):
            diffs.append(Difference("node", "added", b[j].name, _describe_node(b[j]), position=f"#{j}"))
    return diffs


def _describe_node(node: onnx.NodeProto) -> str:
    op = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
    return f"{op}: ({', '.join(node.input)}) -> ({', '.join(node.output)})"


def _node_fields(node: onnx.NodeProto) -> dict:
    fields = {
        "name": node.name,
        "op_type": node.op_type,
        "domain": node.domain or "ai.onnx",
        "inputs": list(node.input),
        "outputs": list(node.output),
    }
    for attr in sorted(node.attribute, key=lambda x: x.name):
        fields[f"attribute {attr.name}"] = _attribute_value(attr)
    return fields


def _attribute_value(attr: onnx.AttributeProto) -> Any:
    """A JSON-friendly value that compares equal exactly when the attributes are equal."""
    if attr.ref_attr_name:
        return f"@{attr.ref_attr_name}"
    value = helper.get_attribute_value(attr)
    if attr.type == onnx.AttributeProto.TENSOR:
        return _describe_tensor(value) + " sha256:" + _tensor_sha256(value)
    if attr.type == onnx.AttributeProto.TENSORS:
        return [_describe_tensor(t) + " sha256:" + _tensor_sha256(t) for t in value]
    if attr.type == onnx.AttributeProto.GRAPH:
        return f"graph '{value.name}' sha256:{_graph_sha256(value)}"
    if attr.type == onnx.AttributeProto.GRAPHS:
        return [f"graph '{g.name}' sha256:{_graph_sha256(g)}" for g in value]
    if attr.type in (onnx.AttributeProto.SPARSE_TENSOR, onnx.AttributeProto.SPARSE_TENSORS,
                     onnx.AttributeProto.TYPE_PROTO, onnx.AttributeProto.TYPE_PROTOS):
        items = value if isinstance(value, list) else [value]
        return [f"sha256:{_sha256(v.SerializeToString(deterministic=True))}" for v in items]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, list):
        return [v.decode("utf-8", errors="backslashreplace") if isinstance(v, bytes) else v for v in value]
    return value


# --- tensors ------------------------------------------------------------------------------------


def _dtype_name(elem_type: int) -> str:
    try:
        return str(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, ValueError, TypeError):  # UNDEFINED, STRING or a type numpy has no stand-in for
        known = elem_type in onnx.TensorProto.DataType.values()
        return onnx.TensorProto.DataType.Name(elem_type).lower() if known else f"type{elem_type}"


def _describe_tensor(tensor: onnx.TensorProto) -> str:
    return f"{_dtype_name(tensor.data_type)}[{', '.join(str(d) for d in tensor.dims)}]"


def _tensor_fields(tensor: onnx.TensorProto) -> dict:
    return {
        "dtype": _dtype_name(tensor.data_type),
        "shape": list(tensor.dims),
        "sha256": _tensor_sha256(tensor),
    }


# Types whose raw bytes are their values as numpy holds them (little-endian, one item per element).
_RAW_IS_ARRAY = frozenset(getattr(onnx.TensorProto, name) for name in (
    "FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16", "INT8", "UINT8", "INT16", "UINT16", "INT32", "UINT32", "INT64",
    "UINT64", "BOOL", "COMPLEX64", "COMPLEX128"))


def _tensor_sha256(tensor: onnx.TensorProto) -> str:
    """Hash of the values, whatever field holds them (raw_data, float_data, int32_data, ...) or
    wherever they are (a file: read a chunk at a time). For the usual types that is the hash of the
    raw little-endian bytes, taken as stored, without converting them."""
    if tensor.data_type in _RAW_IS_ARRAY and io.is_external(tensor):
        digest = hashlib.sha256()
        for chunk in io.tensor_chunks(tensor):
            digest.update(chunk)
        return digest.hexdigest()
    if tensor.data_type in _RAW_IS_ARRAY and tensor.HasField("raw_data"):
        return _sha256(tensor.raw_data)
    if io.is_external(tensor):
        from .compiler.graph import tensor_array

        return _sha256(np.ascontiguousarray(tensor_array(tensor)).tobytes())
    try:
        array = numpy_helper.to_array(tensor)
    except Exception:  # an unusual type numpy_helper cannot read: hash what is stored
        return _sha256(tensor.SerializeToString(deterministic=True))
    if array.dtype == object:
        return _sha256(b"\0".join(v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()))
    return _sha256(np.ascontiguousarray(array).tobytes())


def _graph_sha256(graph: onnx.GraphProto) -> str:
    """Hash of a subgraph with doc strings cleared and each tensor's data replaced by the hash of
    its values (so where a weight is stored does not count, and no weight is serialized)."""
    copy = _without_docs(graph)
    tensors = [*onnx.external_data_helper._get_initializer_tensors_from_graph(copy),
               *onnx.external_data_helper._get_attribute_tensors_from_graph(copy)]
    for tensor in tensors:
        digest = _tensor_sha256(tensor)
        for name in ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data",
                     "uint64_data", "external_data", "data_location"):
            tensor.ClearField(name)
        tensor.raw_data = digest.encode()
    return _sha256(copy.SerializeToString(deterministic=True))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _without_docs(proto):
    """A copy with doc strings cleared at the top level (they do not change behaviour)."""
    copy = type(proto)()
    copy.CopyFrom(proto)
    copy.doc_string = ""
    return copy


# --- display ------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    """A field value for the text report; hashes cut to 12 hex digits, enough to tell them apart."""
    if value is None:
        return "(none)"
    if isinstance(value, str) and not _HASH.search(value):
        return repr(value)
    return _HASH.sub(lambda m: m.group(0)[:12], str(value))
