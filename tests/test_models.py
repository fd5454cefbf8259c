"""The sample-model generators: valid, runnable, deterministic, 2:4 along SPEC's axis where eligible."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from models import build_convnet, build_mlp, build_tiny_transformer, build_transformer, save_external
from models.build import BUNDLED_SAMPLE, EMBEDDED, EXTERNAL
from models.transformer import SHARED_WEIGHT
from onnxsparse.diff import diff_models
from onnxsparse.format import group_stats, to_rows_k
from onnxsparse.io import load_model

REPO = Path(__file__).resolve().parent.parent

GENERATORS = {
    "transformer": build_transformer,
    "tiny_transformer": build_tiny_transformer,
    "convnet": build_convnet,
    "mlp": build_mlp,
}
DTYPES = ["float32", "float16"]
# Weights that must stay dense: not eligible because C/group is not a multiple of 4.
INELIGIBLE = {"convnet": {"stem.weight": 3, "depthwise.weight": 1}}
# Distinct 2:4 weights each generator must produce.
SPARSE_COUNT = {"transformer": 11, "tiny_transformer": 11, "convnet": 6, "mlp": 3}


def weights_by_layer(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str, str, int]]:
    """(node, initializer name, layout, C/group or K) for each MatMul/Gemm/Conv with a constant weight.

    The weight is followed through Identity nodes, as SPEC's definition of a constant weight does.
    """
    initializers = {t.name for t in model.graph.initializer}
    identity_of = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}
    found = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        name = node.input[1]
        while name in identity_of:
            name = identity_of[name]
        if name not in initializers:
            continue  # activations x activations (attention scores): nothing to prune
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        tensor = next(t for t in model.graph.initializer if t.name == name)
        if node.op_type == "Conv":
            layout, k = "oihw", tensor.dims[1]
        elif node.op_type == "Gemm" and attrs.get("transB", 0):
            layout, k = "nk", tensor.dims[1]
        else:
            layout, k = "kn", tensor.dims[0]
        found.append((node, name, layout, k))
    return found


def random_feed(session: ort.InferenceSession, dtype: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    feed = {}
    for value in session.get_inputs():
        shape = [d if isinstance(d, int) else {"batch": 2, "seq": 5}[d] for d in value.shape]
        feed[value.name] = rng.standard_normal(shape).astype(dtype)
    return feed


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(GENERATORS))
def test_generator_builds_valid_runnable_model(name, dtype):
    model = GENERATORS[name](dtype=dtype)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 10
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run(None, random_feed(session, dtype))
    assert outputs[0].dtype == np.dtype(dtype)
    assert np.isfinite(outputs[0]).all()
    assert np.abs(outputs[0]).max() > 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(GENERATORS))
def test_eligible_weights_are_2to4_along_spec_axis(name, dtype):
    model = GENERATORS[name](dtype=dtype)
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    sparse = set()
    for node, weight, layout, k in weights_by_layer(model):
        if weight in INELIGIBLE.get(name, {}):
            assert k == INELIGIBLE[name][weight], node.name
            continue
        assert k % 4 == 0, f"{node.name}: K={k} should be eligible"
        stats = group_stats(to_rows_k(arrays[weight], layout))
        assert stats.share == 1.0, f"{node.name}: {stats.compliant}/{stats.groups} groups are 2:4"
        # Exactly 2 of 4 kept: pruned, not merely sparse by chance.
        assert np.count_nonzero(arrays[weight]) == arrays[weight].size // 2, node.name
        sparse.add(weight)
    assert len(sparse) == SPARSE_COUNT[name]


def test_convnet_ineligible_weights_stay_dense():
    model = build_convnet()
    layers = {weight: (node, k) for node, weight, _, k in weights_by_layer(model)}
    depthwise, k = layers["depthwise.weight"]
    group = next(a.i for a in depthwise.attribute if a.name == "group")
    assert group == 32 and k == 1  # C/group = 1: SPEC makes it ineligible
    for weight in INELIGIBLE["convnet"]:
        array = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == weight))
        assert np.count_nonzero(array) == array.size, f"{weight} should be dense"
        # Grouped by 4 along SPEC's axis it is not 2:4 (K is not even a multiple of 4 there).
        with pytest.raises(ValueError):
            group_stats(to_rows_k(array, "oihw"))


def test_convnet_covers_conv_attributes():
    attrs = {}
    for node in build_convnet().graph.node:
        if node.op_type == "Conv":
            attrs[node.name] = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["down/Conv"]["strides"] == [2, 2] and attrs["down/Conv"]["pads"] == [1, 1, 1, 1]
    assert attrs["pointwise/Conv"]["kernel_shape"] == [1, 1]
    assert attrs["grouped/Conv"]["group"] == 2
    assert attrs["same/Conv"]["auto_pad"] == b"SAME_UPPER"
    assert attrs["dilated/Conv"]["dilations"] == [2, 2]


def test_transformer_shares_a_weight_through_identity():
    model = build_transformer()
    users = [node.name for node, weight, _, _ in weights_by_layer(model) if weight == SHARED_WEIGHT]
    assert users == ["layers.0.attn.q_proj/MatMul", "layers.1.attn.q_proj/MatMul"]
    identities = [n for n in model.graph.node if n.op_type == "Identity"]
    assert [list(n.input) for n in identities] == [[SHARED_WEIGHT]]
    ops = {n.op_type for n in model.graph.node}
    assert {"LayerNormalization", "Softmax", "Gemm", "MatMul", "Erf"} <= ops
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 2 and all(a.i == 1 for n in gemms for a in n.attribute if a.name == "transB")


def test_transformer_batch_and_seq_are_dynamic():
    model = build_transformer()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 64), (4, 9, 64)]:
        (out,) = session.run(None, {"tokens": np.ones(shape, np.float32)})
        assert out.shape == shape


@pytest.mark.parametrize("name", list(GENERATORS))
def test_generators_are_deterministic(name):
    build = GENERATORS[name]
    assert build().SerializeToString() == build().SerializeToString()
    assert build(seed=1).SerializeToString() != build().SerializeToString()


def test_bundled_sample_matches_generator():
    assert BUNDLED_SAMPLE.stat().st_size < 200_000
    committed = load_model(BUNDLED_SAMPLE)
    result = diff_models(committed, build_tiny_transformer())
    assert result.equal, "models/samples is stale; run `python -m models.build --update-sample`\n" + result.format()


def test_external_model_keeps_weights_beside_it(tmp_path):
    written = save_external(tmp_path / "mlp.onnx")
    assert sorted(p.name for p in written) == ["mlp.onnx", "mlp.onnx.data"]
    assert (tmp_path / "mlp.onnx").stat().st_size < 4096  # the weights are not inline
    raw = onnx.load(str(tmp_path / "mlp.onnx"), load_external_data=False)
    external = [t.name for t in raw.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert {"fc_0.weight", "fc_1.weight", "fc_2.weight"} <= set(external)
    assert diff_models(load_model(tmp_path / "mlp.onnx"), build_mlp()).equal
    session = ort.InferenceSession(str(tmp_path / "mlp.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, random_feed(session, "float32"))[0].shape == (2, 10)


@pytest.mark.parametrize("how", [["-m", "models.build"], ["models/build.py"]])
def test_build_cli_writes_every_sample(tmp_path, how):
    outdir = tmp_path / "out" / "nested"
    result = subprocess.run([sys.executable, *how, str(outdir)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    names = {p.name for p in outdir.iterdir()}
    assert set(EMBEDDED) | set(EXTERNAL) | {f"{n}.data" for n in EXTERNAL} == names
    for name in list(EMBEDDED) + list(EXTERNAL):
        assert load_model(outdir / name).ir_version == 10
    assert (outdir / "tiny_transformer.onnx").read_bytes() == BUNDLED_SAMPLE.read_bytes()
