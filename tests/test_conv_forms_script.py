"""benchmarks/cuda/conv_forms.py without a GPU: how often the ResNet-50-like net holds each distinct
conv (the summary's weights), the summary's arithmetic, and one clear line where ONNX Runtime has
no CUDA EP."""

from __future__ import annotations

import subprocess
import sys

import onnxruntime as ort
import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "benchmarks" / "cuda"))
import conv_forms  # noqa: E402
from models.bench_nets import conv_specs, resnet_model  # noqa: E402


def test_counts_cover_every_eligible_conv_once():
    net = resnet_model()
    counts = conv_forms.spec_counts(net)
    specs = conv_specs(net)
    eligible = [n for n in net.graph.node if n.op_type == "Conv"
                and next(t for t in net.graph.initializer if t.name == n.input[1]).dims[1] % 4 == 0]
    assert sum(counts[conv_forms.key(s)] for s in specs) == len(eligible) == 52
    assert max(counts.values()) > 1  # the bottleneck stages repeat their convs


def test_summary_ceilings(capsys):
    # two convs of 10 us whose best form takes 8 and the sparse GEMM 5; one of 4 us that loses (kept dense)
    conv_forms.summary([(2, 10.0, 8.0, 5.0), (1, 4.0, 5.0, float("nan"))], net_us=100.0)
    out = capsys.readouterr().out
    assert "convs (each timed alone, x count): 24.0 us" in out
    assert "saves 4.0 us of the convs -> end to end at most 1.042x" in out
    assert "saves 10.0 us of the convs -> end to end at most 1.111x" in out


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA")
def test_without_cuda_one_line():
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cuda" / "conv_forms.py"), "--gemm"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "no CUDAExecutionProvider" in run.stderr and "Traceback" not in run.stderr
