"""The model being compiled, on onnx-graphsurgeon; the only module that knows graphsurgeon's quirks.

``ModelGraph`` wraps a ``gs.Graph`` together with what graphsurgeon does not keep across
import/export: graph inputs that are also initializers (graphsurgeon drops them from the inputs),
the IR version (export resets it), metadata and opset imports. The passes read and build tensors
through the helpers here:

- ``resolve_constant(tensor)``: follows ``Identity`` chains to the initializer or ``Constant``
  node holding a weight, or says why there is none (the one constant resolver);
- ``walk_subgraphs`` / ``nested_nodes``: the subgraph bodies and functions the passes do not visit;
- ``constant_array`` / ``make_constant``: values as numpy arrays, read from and written to ONNX
  TensorProtos directly, because graphsurgeon mangles bfloat16 when it converts arrays itself.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from ..errors import OnnxSparseError
from ..spec import DOMAIN, MAX_IR_VERSION, ONNX_DOMAINS, OPSET_VERSION

# graphsurgeon logs warnings of its own (colours, dtypes) on stderr; the CLI promises one line.
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR



class ModelGraph:
    """A model as a graphsurgeon graph, exportable back to an ``onnx.ModelProto``."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.source = model
        self.graph: gs.Graph = gs.import_onnx(model)
        _keep_declared_io_types(self.graph, model.graph)
        # Graph inputs by name, including initializers that are also inputs (overridable defaults).
        self.input_names = {value.name for value in model.graph.input}
        self._taken: set[str] | None = None  # names in use, filled on the first unique_name
        self.layers: list | None = None  # the LayerRecords CheckSparsity found, for the rewrite after it
        # Initializers the passes made in the main graph: exported there even when only bodies read them.
        self.main_initializers: set[str] = set()

    def nodes(self) -> list[gs.Node]:
        """The top-level nodes, in graph order."""
        return list(self.graph.nodes)

    @property
    def where(self) -> str:
        """The scope's description: "" for the main graph (see ``Scope``)."""
        return ""

    def scopes(self) -> dict[str, "ModelGraph | Scope"]:
        """The main graph ("") and every If/Loop/Scan body, nested ones too, by where they are
        ("the then_branch of If 'c'", as ``walk_subgraphs`` says it). Local functions are not scopes:
        the passes do not rewrite them."""
        found: dict[str, ModelGraph | Scope] = {"": self}
        for where, subgraph, parent in walk_subgraphs(self.graph.nodes, with_parent=True):
            found[where] = Scope(self, subgraph, where, found[parent])
        return found

    def main_constant_names(self) -> set[str]:
        """Names of the constants the main graph defines: initializers and ``Constant`` node outputs."""
        graph = self.source.graph
        return {tensor.name for tensor in graph.initializer} | {
            out for node in graph.node if node.op_type == "Constant" and node.domain in ("", "ai.onnx") for out in node.output}

    def scope(self, where: str) -> "ModelGraph | Scope":
        if not where:
            return self
        found = self.scopes().get(where)
        if found is None:
            raise ValueError(f"no subgraph {where} in this model")
        return found

    def onnx_opset(self) -> int:
        """The model's version of the default ONNX domain."""
        return next((entry.version for entry in self.source.opset_import if entry.domain in ("", "ai.onnx")), 1)

    def is_graph_input(self, tensor: gs.Tensor) -> bool:
        return tensor.name in self.input_names

    def unique_name(self, base: str) -> str:
        """A tensor or node name not used in the graph yet."""
        if self._taken is None:
            self._taken = set()
            for scope in self.scopes().values():
                self._taken |= set(scope.graph.tensors().keys()) | {node.name for node in scope.graph.nodes}
        name, count = base, 1
        while name in self._taken:
            name, count = f"{base}_{count}", count + 1
        self._taken.add(name)
        return name

    def add_node(self, node: gs.Node, before: gs.Node | None = None, after: gs.Node | None = None) -> gs.Node:
        """Add a node, next to another one when given (keeps the graph's order recognisable)."""
        anchor = before if before is not None else after
        nodes = self.graph.nodes
        position = self.position(anchor) if anchor is not None else None
        if position is None:
            nodes.append(node)
        else:
            nodes.insert(position if before is not None else position + 1, node)
        return node

    def position(self, node: gs.Node) -> int | None:
        """Where ``node`` is in the graph's node list (None: not there)."""
        return next((i for i, other in enumerate(self.graph.nodes) if other is node), None)

    def move_before(self, node: gs.Node, anchor: gs.Node) -> None:
        """Move ``node`` to just before ``anchor`` if it comes after it (both in the graph)."""
        at, here = self.position(node), self.position(anchor)
        if at > here:
            nodes = self.graph.nodes
            nodes.insert(here, nodes.pop(at))

    @staticmethod
    def remove_node(node: gs.Node) -> None:
        """Disconnect a node; ``cleanup`` then drops it and whatever only it used."""
        node.inputs.clear()
        node.outputs.clear()

    def cleanup(self) -> None:
        """Drop what no output needs. No toposort: nodes are inserted where they belong, and
        graphsurgeon's sort would reorder independent nodes, which makes diffs hard to read."""
        self.graph.cleanup()

    def to_model(self) -> onnx.ModelProto:
        """Export, restoring what graphsurgeon does not carry over from the source model."""
        model = gs.export_onnx(self.graph, do_type_check=True)
        main_names = {tensor.name for tensor in self.source.graph.initializer}
        main_names |= self.main_initializers | {tensor.name for tensor in model.graph.initializer}
        _hoist_outer_initializers(model, main_names)
        source = self.source
        model.ir_version = min(source.ir_version, MAX_IR_VERSION)
        for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
            setattr(model, field, getattr(source, field))
        del model.metadata_props[:]
        model.metadata_props.extend(source.metadata_props)
        model.graph.doc_string = source.graph.doc_string
        _restore_opset_imports(model, source)
        _restore_overridable_inputs(model, source)
        return model


class Scope:
    """One subgraph body (If/Loop/Scan) of a ``ModelGraph``, seen as the passes see a graph.

    Its nodes read outer-scope tensors as the same graphsurgeon objects, so ``resolve_constant``
    follows a weight to a main-graph initializer or ``Constant`` node as it does at the top level.
    Graph inputs here are the body's own inputs (a Loop's iteration count and carried values) and
    those of every enclosing graph. Names stay unique across the model (``unique_name`` is the
    model's), and what the passes add to the body (a ``CompressOp``, the folded ``values`` and
    ``index``) is exported with the body, so it is visible where the layer reads it."""

    def __init__(self, model: ModelGraph, graph: gs.Graph, where: str, parent: "ModelGraph | Scope") -> None:
        self.model = model
        self.graph = graph
        self.where = where
        self.source = model.source
        self.input_names = {tensor.name for tensor in graph.inputs} | parent.input_names

    def nodes(self) -> list[gs.Node]:
        return list(self.graph.nodes)

    def is_graph_input(self, tensor: gs.Tensor) -> bool:
        return tensor.name in self.input_names

    def unique_name(self, base: str) -> str:
        return self.model.unique_name(base)

    def onnx_opset(self) -> int:
        return self.model.onnx_opset()

    add_node = ModelGraph.add_node
    position = ModelGraph.position
    move_before = ModelGraph.move_before
    remove_node = staticmethod(ModelGraph.remove_node)


def _keep_declared_io_types(graph: gs.Graph, source: onnx.GraphProto) -> None:
    """Graph inputs and outputs keep the element type the model declares for them.

    Graphsurgeon takes a tensor's type from ``value_info`` when the name is there too, so a stale
    entry (onnxconverter-common's ``keep_io_types=True`` leaves one in float16 for an output that
    its Cast makes float32) would change the exported output's type and ONNX Runtime would refuse
    the model."""
    declared = {value.name: value.type.tensor_type for value in [*source.input, *source.output]
                if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type}
    for tensor in [*graph.inputs, *graph.outputs]:
        found = declared.get(tensor.name)
        if found is None or not isinstance(tensor, gs.Variable):
            continue
        dtype = np_dtype(found.elem_type) if found.elem_type != onnx.TensorProto.BFLOAT16 else tensor.dtype
        if tensor.dtype != dtype:
            tensor.dtype = dtype


def _hoist_outer_initializers(model: onnx.ModelProto, main_names: set[str]) -> None:
    """Graphsurgeon exports a main-graph initializer that subgraphs read as an initializer of each
    such subgraph too; keep it in the main graph only, once (put back there when only subgraphs read it)."""
    present = {tensor.name for tensor in model.graph.initializer}
    for _, subgraph in walk_subgraphs(model.graph.node):
        keep = []
        for tensor in subgraph.initializer:
            if tensor.name in main_names:
                if tensor.name not in present:
                    model.graph.initializer.append(tensor)
                    present.add(tensor.name)
            else:
                keep.append(tensor)
        del subgraph.initializer[:]
        subgraph.initializer.extend(keep)


def _restore_opset_imports(model: onnx.ModelProto, source: onnx.ModelProto) -> None:
    imports = [copy.deepcopy(entry) for entry in source.opset_import]
    known = {entry.domain for entry in imports}
    used = {node.domain for node in model.graph.node} | {
        node.domain for function in model.functions for node in function.node
    }
    if DOMAIN in used and DOMAIN not in known:
        imports.append(onnx.helper.make_opsetid(DOMAIN, OPSET_VERSION))
    del model.opset_import[:]
    model.opset_import.extend(imports)


def _restore_overridable_inputs(model: onnx.ModelProto, source: onnx.ModelProto) -> None:
    """Graphsurgeon drops graph inputs that are also initializers; put back those still there."""
    present = {value.name for value in model.graph.input} | {tensor.name for tensor in model.graph.initializer}
    inputs = [copy.deepcopy(value) for value in source.graph.input if value.name in present]
    exported = {value.name: value for value in model.graph.input}
    # Keep the source's order, then any input the passes added.
    names = {value.name for value in inputs}
    inputs += [copy.deepcopy(value) for name, value in exported.items() if name not in names]
    del model.graph.input[:]
    model.graph.input.extend(inputs)


# --- constants -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConstantSource:
    """Where a weight's value lives: an initializer (``gs.Constant``) or a ``Constant`` node's output."""

    tensor: gs.Tensor

    @property
    def name(self) -> str:
        return self.tensor.name

    def proto(self) -> onnx.TensorProto:
        return constant_proto(self.tensor)


def is_omitted(tensor: gs.Tensor | None) -> bool:
    """An optional input left out (absent, or the empty name)."""
    return tensor is None or (isinstance(tensor, gs.Variable) and tensor.name == "")


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


def resolve_constant(mg: ModelGraph, tensor: gs.Tensor) -> tuple[ConstantSource | None, str | None]:
    """The constant behind ``tensor`` (through Identity chains), or ``(None, reason)``.

    An Identity cycle (an invalid graph) is an ``OnnxSparseError`` naming the tensor."""
    current = tensor
    via = ""
    seen: set[int] = set()
    while True:
        if id(current) in seen:
            raise OnnxSparseError(f"weight '{tensor.name}': the Identity chain behind it is a cycle (through '{current.name}')")
        seen.add(id(current))
        if mg.is_graph_input(current):
            if current is tensor:
                return None, f"weight '{tensor.name}' is a graph input, so it is not constant"
            return None, f"weight '{tensor.name}' comes from graph input '{current.name}', so it is not constant"
        if isinstance(current, gs.Constant):
            return ConstantSource(current), None
        node = producer(current)
        if node is None:
            return None, f"weight '{tensor.name}' is not constant (no initializer or Constant node produces it{via})"
        if node.op == "Identity" and node.domain in ONNX_DOMAINS and node.inputs:
            current, via = node.inputs[0], " through Identity"
            continue
        if node.op == "Constant" and node.domain in ONNX_DOMAINS:
            if isinstance(node.attrs.get("value"), gs.Constant):
                return ConstantSource(current), None
            return None, f"weight '{tensor.name}' comes from a Constant node without a 'value' tensor"
        if node.op == "DequantizeLinear" and node.domain in ONNX_DOMAINS:
            return None, (f"weight '{tensor.name}' is quantized (computed by DequantizeLinear); int8 layers are not "
                          "supported yet: prune the float model before quantizing it")
        return None, f"weight '{tensor.name}' is computed by a {node.op} node, so it is not constant"


def constant_proto(tensor: gs.Tensor) -> onnx.TensorProto:
    """The TensorProto of an initializer or of a Constant node's output."""
    if isinstance(tensor, gs.Variable):
        node = producer(tensor)
        if node is None or node.op != "Constant":
            raise ValueError(f"tensor '{tensor.name}' is not a constant")
        tensor = node.attrs["value"]
    values = tensor._values  # LazyValues keeps the original TensorProto; use it as it is
    if isinstance(values, LazyValues):
        return values.tensor
    return onnx.numpy_helper.from_array(np.asarray(values), tensor.name)


def constant_array(tensor: gs.Tensor) -> np.ndarray:
    """A constant's values (bfloat16 as ``ml_dtypes.bfloat16``), read from its file when the model
    was opened with its weights left there (``tensor_array``)."""
    return tensor_array(constant_proto(tensor))


def tensor_array(proto: onnx.TensorProto) -> np.ndarray:
    """A TensorProto's values. One whose data is external is mapped from its file at that moment
    (copy-on-write: the file never changes; the pages are read as the caller touches them and go
    when the array does, nothing is kept): the front door (``onnxsparse.io.open_model``) made its
    location absolute; a relative one is taken from the current directory. Mapping costs less
    than reading into fresh memory (measured: 0.05 s against 0.1-0.3 s for 180 MB from the page cache)."""
    if proto.data_location != onnx.TensorProto.EXTERNAL:
        return onnx.numpy_helper.to_array(proto)
    info = {entry.key: entry.value for entry in proto.external_data}
    offset, length = int(info.get("offset") or 0), int(info.get("length") or -1)
    dtype = np_dtype(proto.data_type)
    count = int(np.prod(proto.dims, dtype=np.int64))
    if proto.data_type in _FIXED_SIZE_TYPES and dtype.itemsize * count == length:
        if count == 0:
            return np.empty(tuple(proto.dims), dtype)
        try:
            mapped = np.memmap(info["location"], dtype=dtype, mode="c", offset=offset, shape=(count,))
        except ValueError:  # the file is shorter than offset + length
            raise OnnxSparseError(f"tensor '{proto.name}': its external data file ends early") from None
        return np.asarray(mapped).reshape(tuple(proto.dims))
    inline = onnx.TensorProto()  # packed or variable-size types: onnx's own conversion
    inline.CopyFrom(proto)
    del inline.external_data[:]
    inline.data_location = onnx.TensorProto.DEFAULT
    with open(info["location"], "rb") as f:
        f.seek(offset)
        inline.raw_data = f.read(length)
    return onnx.numpy_helper.to_array(inline)


# Element types stored as one fixed-size little-endian item per element (mapped with np.memmap).
_FIXED_SIZE_TYPES = frozenset(getattr(onnx.TensorProto, name) for name in (
    "FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16", "INT8", "UINT8", "INT16", "UINT16", "INT32", "UINT32", "INT64",
    "UINT64", "BOOL"))


def make_constant(name: str, array: np.ndarray) -> gs.Constant:
    """A new initializer built from a TensorProto, so every dtype (bfloat16 too) exports exactly."""
    return gs.Constant(name, LazyValues(onnx.numpy_helper.from_array(np.ascontiguousarray(array), name)))


def set_constant(tensor: gs.Variable, array: np.ndarray | onnx.TensorProto) -> gs.Constant:
    """Turn a Variable whose producer was removed into an initializer in place (consumers follow);
    ``array`` may be a ready TensorProto (e.g. one whose data is in an external file)."""
    proto = array if isinstance(array, onnx.TensorProto) else onnx.numpy_helper.from_array(np.ascontiguousarray(array), tensor.name)
    return tensor.to_constant(LazyValues(proto))


def as_2d_weight(array: np.ndarray, layout: str) -> np.ndarray:
    """A 1-D Conv's weight ``[OC, C/group, KW]`` as the 2-D one ``[OC, C/group, 1, KW]`` (H=1), which
    SPEC's "oihw" view and the 2-D op read; any other weight as it is."""
    return array[:, :, None, :] if layout == "oihw" and array.ndim == 3 else array


def dtype_name(data_type: int) -> str:
    """ONNX's name of a tensor element type, lower case: float, float16, bfloat16, ..."""
    try:
        return onnx.TensorProto.DataType.Name(data_type).lower()
    except ValueError:
        return f"type {data_type}"


def np_dtype(data_type: int) -> np.dtype:
    return onnx.helper.tensor_dtype_to_np_dtype(data_type)


# --- subgraphs and functions -----------------------------------------------------------------------


def walk_subgraphs(nodes, where: str = "", with_parent: bool = False) -> Iterator[tuple]:
    """Every subgraph body (If/Loop/Scan) that these nodes hold, nested ones too, with where it
    is: "the then_branch of If 'c' > the body of Loop 'l'". The one subgraph walker, on ONNX
    ``NodeProto``s (yielding ``GraphProto``s) or graphsurgeon nodes (yielding ``gs.Graph``s);
    ``with_parent`` adds the where of the enclosing graph ("" for the top level)."""
    parent = where[: -len(" > ")] if where else ""
    for node in nodes:
        for name, subgraph in _subgraph_attributes(node):
            op = node.op_type if isinstance(node, onnx.NodeProto) else node.op
            inner = f"{where}the {name} of {op} '{node.name}'"
            yield (inner, subgraph, parent) if with_parent else (inner, subgraph)
            body = subgraph.node if isinstance(subgraph, onnx.GraphProto) else subgraph.nodes
            yield from walk_subgraphs(body, inner + " > ", with_parent)


def _subgraph_attributes(node) -> Iterator[tuple[str, "onnx.GraphProto | gs.Graph"]]:
    if isinstance(node, onnx.NodeProto):
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield attribute.name, subgraph
        return
    for name, value in node.attrs.items():
        for subgraph in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(subgraph, gs.Graph):
                yield name, subgraph


def subgraph_reads(node: onnx.NodeProto) -> list[str]:
    """The tensor names that nodes inside ``node``'s subgraphs read (outer-scope reads included)."""
    return [name for _, subgraph in walk_subgraphs([node]) for inner in subgraph.node for name in inner.input]


def nested_nodes(model: onnx.ModelProto) -> Iterator[tuple[onnx.NodeProto, str]]:
    """Nodes the passes do not visit, with where they are: subgraph bodies and local functions."""
    for where, subgraph in walk_subgraphs(model.graph.node):
        for node in subgraph.node:
            yield node, where
    for function in model.functions:
        where = f"function '{function.name}'"
        for node in function.node:
            yield node, where
        for inner, subgraph in walk_subgraphs(function.node, where + " > "):
            for node in subgraph.node:
                yield node, inner
