"""Pruning layers inside If/Loop/Scan bodies (silero-vad keeps all its Convs in If branches):
found as check/compile find them; magnitude prunes them; data-driven methods say why not."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import HEAD, make_model

from onnxsparse.api import check_model
from onnxsparse.format import group_stats, to_rows_k
from onnxsparse.prune import Calibration, PruneOptions, prune_model, scan_layers


def dense(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def silero_like() -> onnx.ModelProto:
    """Convs only inside If branches: an outer-scope weight shared by both branches, and a branch's own."""
    model = make_model(
        f"""{HEAD} g (float[1,8,6,6] img, bool c) => (float[1,8,6,6] z) {{
        z = If(c) <
            then_branch = t () => (float[1,8,6,6] zt) {{ a = Conv<pads=[1,1,1,1]>(img, K) r = Relu(a) zt = Conv(r, V) }},
            else_branch = e () => (float[1,8,6,6] ze) {{ ze = Conv<pads=[1,1,1,1]>(img, K) }}>
        }}""",
        K=dense((8, 8, 3, 3), 1),
    )
    then = next(a.g for a in model.graph.node[0].attribute if a.name == "then_branch")
    then.initializer.append(onnx.numpy_helper.from_array(dense((8, 8, 1, 1), 2), "V"))
    return model


def body_weight(model, name):
    for attribute in model.graph.node[0].attribute:
        for tensor in attribute.g.initializer:
            if tensor.name == name:
                return onnx.numpy_helper.to_array(tensor)
    return onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def test_scan_finds_the_layers_check_finds():
    model = silero_like()
    scan = scan_layers(model)
    assert {layer.weight for layer in scan.layers} == {"K", "V"}
    assert {len(layer.uses) for layer in scan.layers if layer.weight == "K"} == {2}  # one weight, pruned once
    assert all(layer.scope.startswith("the ") for layer in scan.layers)
    checked = check_model(model).layers  # check describes the same three Convs in their bodies
    assert sorted((r.scope, r.source) for r in checked) == sorted(
        (use.scope, layer.weight) for layer in scan.layers for use in layer.uses)


def test_magnitude_prunes_layers_in_bodies():
    model = silero_like()
    pruned, report = prune_model(model, PruneOptions(method="magnitude"), None)
    assert {r.weight for r in report.layers} == {"K", "V"}
    for name in ("K", "V"):
        assert group_stats(to_rows_k(body_weight(pruned, name), "oihw")).share == 1.0
    onnx.checker.check_model(pruned)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "auto"])
def test_data_driven_methods_say_why_body_layers_stay_dense(method):
    model = silero_like()
    with pytest.raises(Exception) as caught:
        prune_model(model, PruneOptions(method=method), Calibration(model, samples=4))
    message = str(caught.value)
    assert "inside the" in message and "--method magnitude" in message
    assert "has no Conv, MatMul or Gemm" not in message
