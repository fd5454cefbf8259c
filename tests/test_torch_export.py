"""onnxsparse.torch.export: exported masked layers pass the verifier, compile with zero refusals and
compute what the PyTorch model does; a masked layer the compiler would refuse makes export fail."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install '.[torch]')")
from torch import nn  # noqa: E402

import onnxsparse  # noqa: E402
import onnxsparse.torch as ost  # noqa: E402
from onnxsparse.api import compile_model  # noqa: E402

from conftest import REPO  # noqa: E402


def _dynamo_available() -> bool:
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


LAYERS = {
    "linear": (lambda: nn.Linear(16, 8), (3, 16)),
    "linear_no_bias": (lambda: nn.Linear(16, 8, bias=False), (3, 16)),  # TorchScript: MatMul(x, W^T)
    "linear_3d_input": (lambda: nn.Linear(16, 8), (2, 3, 16)),
    "conv2d": (lambda: nn.Conv2d(8, 6, 3, padding=1, stride=2), (2, 8, 7, 7)),
    "grouped_conv2d": (lambda: nn.Conv2d(8, 6, 3, padding=1, groups=2), (2, 8, 5, 5)),
    "conv2d_1x1_no_bias": (lambda: nn.Conv2d(12, 4, 1, bias=False), (1, 12, 4, 4)),
}


def _run_compiled(result, x: torch.Tensor) -> np.ndarray:
    session = onnxsparse.InferenceSession(result.model, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("name", list(LAYERS))
def test_exported_masked_layer_passes_the_verifier_and_is_rewritten(name, tmp_path):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = make()
    ost.prepare(layer).finalize()
    report = ost.export(layer, (torch.randn(*shape),), tmp_path / "m.onnx", dynamo=False)
    assert [(r.layer, r.rewritten) for r in report.layers] == [("", True)]
    assert len(report.compile_result.rewritten) == 1
    layer = report.compile_result.rewritten[0].to_dict()
    assert layer["eligible"] and layer["share"] == 1.0


@pytest.mark.kernels
@pytest.mark.parametrize("name", list(LAYERS))
def test_compiled_layer_computes_what_torch_does(name, tmp_path):
    make, shape = LAYERS[name]
    torch.manual_seed(1)
    layer = make()
    sparsifier = ost.prepare(layer)  # exported while still masked: export finalizes a copy
    x = torch.randn(*shape)
    report = ost.export(layer, (x,), tmp_path / "m.onnx", dynamo=False)
    with torch.no_grad():
        expected = layer(x).numpy()
    np.testing.assert_allclose(_run_compiled(report.compile_result, x), expected, rtol=1e-5, atol=1e-5)
    assert hasattr(layer, "parametrizations") and sparsifier.active  # the model passed in is unchanged


class Net(nn.Module):
    """A CNN + MLP with every case: a skipped first conv, a grouped conv, BatchNorm, a bias-free head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 16, 3, padding=1, groups=2)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4 * 4, 32)
        self.head = nn.Linear(32, 10, bias=False)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.head(torch.relu(self.fc(x.flatten(1))))


@pytest.mark.kernels
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_network_exports_compiles_with_zero_refusals_and_matches_torch(dynamo, tmp_path):
    if dynamo and not _dynamo_available():
        pytest.skip("the dynamo exporter needs onnxscript (pip install '.[torch]')")
    torch.manual_seed(2)
    model = Net()
    x = torch.randn(4, 3, 8, 8)
    model(x)  # BatchNorm running statistics that are not the identity
    sparsifier = ost.prepare(model, method="wanda", calibration=[torch.randn(8, 3, 8, 8)])
    sparsifier.finalize()
    assert [layer.name for layer in sparsifier.skipped] == ["stem"]
    report = ost.export(model, (x,), tmp_path / "net.onnx", dynamo=dynamo)
    assert sorted(r.layer for r in report.layers) == ["conv", "fc", "head"]
    assert report.refused == []
    model.eval()
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(_run_compiled(report.compile_result, x), expected, rtol=1e-4, atol=1e-5)


def test_the_cli_compiles_the_export_with_every_masked_layer_rewritten(tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 8))
    ost.prepare(model).finalize()
    ost.export(model, (torch.randn(1, 4, 6, 6),), tmp_path / "m.onnx", dynamo=False)
    out = subprocess.run(
        [sys.executable, "-m", "onnxsparse", "compile", str(tmp_path / "m.onnx"), "--json"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["rewritten"] == report["total"] == 2
    assert (tmp_path / "m.sparse.onnx").is_file()


def test_a_weight_sparse_along_the_wrong_axis_fails_export_with_the_reason(tmp_path):
    layer = nn.Linear(8, 8)
    ost.prepare(layer).finalize()
    with torch.no_grad():  # 2:4 down the columns (out_features) instead of along in_features
        layer.weight.copy_(torch.ones(8, 8) * torch.tensor([1.0, 1.0, 0.0, 0.0] * 2)[:, None])
    with pytest.raises(ost.SparseExportError, match=r"1 of 1 masked layers would not be rewritten.*more than 2 non-zeros"):
        ost.export(layer, (torch.randn(2, 8),), tmp_path / "m.onnx", dynamo=False)


def test_weights_exported_as_graph_inputs_fail_export_loudly(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    ost.prepare(model).finalize()
    with pytest.raises(ost.SparseExportError, match=r"2 of 2 masked layers.*0: Gemm node"):
        ost.export(model, (torch.randn(2, 8),), tmp_path / "m.onnx", dynamo=False, export_params=False)


def test_without_masked_layers_export_checks_nothing(tmp_path):
    report = ost.export(nn.Linear(8, 4), (torch.randn(1, 8),), tmp_path / "m.onnx", dynamo=False)
    assert report.layers == [] and (tmp_path / "m.onnx").is_file()


@pytest.mark.parametrize("n,m", [(1, 4), (2, 8), (1, 2)])
def test_nm_patterns_that_are_2_4_along_the_axis_compile(n, m, tmp_path):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    sparsifier = ost.prepare(model, n=n, m=m)
    assert float((model[0].weight == 0).float().mean()) == 1 - n / m
    sparsifier.finalize()
    report = ost.export(model, (torch.randn(2, 16),), tmp_path / "m.onnx", dynamo=False)
    assert [r.rewritten for r in report.layers] == [True, True]


def test_a_pattern_the_compiler_cannot_take_warns_and_export_refuses(tmp_path, caplog):
    torch.manual_seed(5)
    layer = nn.Linear(16, 8)
    with caplog.at_level("WARNING", logger="onnxsparse.torch"):
        ost.prepare(layer, n=4, m=8).finalize()
    assert "4:8 masks are not 2:4 along SPEC's axis" in caplog.text
    with pytest.raises(ost.SparseExportError, match="groups have more than 2 non-zeros"):
        ost.export(layer, (torch.randn(2, 16),), tmp_path / "m.onnx", dynamo=False)


def test_a_batchnorm_the_exporter_folds_into_the_conv_still_matches_its_layer(tmp_path):
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
    model(torch.randn(4, 8, 6, 6))  # running statistics: the folded weight is scaled per output channel
    ost.prepare(model).finalize()
    report = ost.export(model, (torch.randn(1, 8, 6, 6),), tmp_path / "m.onnx", dynamo=False)
    import onnx

    ops = [node.op_type for node in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert "BatchNormalization" not in ops and "Conv" in ops  # folded into the Conv's weight
    assert [(r.layer, r.op, r.rewritten) for r in report.layers] == [("0", "Conv", True), ("4", "Gemm", True)]
