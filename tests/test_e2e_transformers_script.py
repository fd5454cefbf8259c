"""benchmarks/e2e_transformers_cuda.py: the parts that run without a GPU, on tiny configurations of
its three models (transformers' BERT and Llama, a small ResNet-like CNN): the torch.onnx export,
`onnxsparse prune --method magnitude`, `compile` with every eligible layer rewritten, the compiled
model's output against the pruned dense one's on the CPU EP, the table, and the refusals. The GPU
part (tune --provider cuda, compile --target cuda, timing with and without CUDA graphs) is skipped
here with the reason."""

from __future__ import annotations

import json
import subprocess
import sys

import onnxruntime as ort
import pytest

from conftest import REPO, library_available

pytest.importorskip("torch", reason="the script exports from PyTorch (pip install torch)")
pytest.importorskip("transformers", reason="the script builds BERT and Llama with transformers")
pytestmark = [pytest.mark.kernels,
              pytest.mark.skipif(not library_available(), reason="the onnxsparse custom-op library is not built")]

SCRIPT = REPO / "benchmarks" / "e2e_transformers_cuda.py"


def _run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    out = work / "rows.json"
    done = _run("--tiny", "--cpu", "--work", str(work), "--out", str(out), "--bert-batches", "1,2",
                "--llama-tokens", "1,5", "--resnet-batches", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    return work, json.loads(out.read_text()), done.stdout


def test_every_model_exports_prunes_and_compiles(cpu_run):
    work, record, _ = cpu_run
    rows = record["rows"]
    assert [(r["model"], r["input"]) for r in rows] == [
        ("bert-tiny", "1x16"), ("bert-tiny", "2x16"), ("llama-tiny", "1x1"), ("llama-tiny", "1x5"),
        ("resnet-tiny", "2x3x32x32")]
    for name in ("bert_tiny", "llama_tiny", "resnet_tiny"):
        assert (work / f"{name}.onnx").is_file() and (work / f"{name}.pruned.onnx").is_file()
        assert (work / f"{name}.all.onnx").is_file()
    for r in rows:
        rewritten, total = (int(v) for v in r["layers"].split("/"))
        assert 0 < rewritten <= total, r
        assert r["finite"], r
        # fp16 model, 2:4 weights already pruned: only the kernels' rounding differs
        assert r["rel_diff"] < 5e-3, r


def test_compiled_models_hold_the_sparse_ops(cpu_run):
    import onnx

    work, _, _ = cpu_run
    ops = {name: {n.op_type for n in onnx.load(str(work / f"{name}.all.onnx"), load_external_data=False).graph.node}
           for name in ("bert_tiny", "llama_tiny", "resnet_tiny")}
    assert "MatMulCompress" in ops["bert_tiny"] and "MatMulCompress" in ops["llama_tiny"]
    assert "Conv2dCompress" in ops["resnet_tiny"]


def test_table_names_device_versions_and_command(cpu_run):
    _, record, stdout = cpu_run
    assert stdout.startswith("device: ")
    assert "versions: onnxruntime " in stdout and "transformers " in stdout and "torch " in stdout
    assert "command: benchmarks/e2e_transformers_cuda.py --tiny --cpu" in stdout
    assert stdout.count("| bert-tiny |") == 2 and "| resnet-tiny | 2x3x32x32 |" in stdout
    assert record["environment"]["onnxruntime"] == ort.__version__


def test_unknown_model_is_refused_in_one_line(tmp_path):
    done = _run("--models", "bert,gpt", "--cpu", "--work", str(tmp_path), timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["e2e_transformers_cuda: unknown model(s) gpt (bert, llama, resnet50)"]


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this ONNX Runtime has CUDA")
def test_gpu_part_without_cuda_is_refused(tmp_path):
    done = _run("--tiny", "--models", "bert", "--work", str(tmp_path), timeout=120)
    assert done.returncode == 2
    assert "no CUDAExecutionProvider" in done.stderr


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="the GPU part (tune --provider cuda, compile --target cuda, CUDA-graph timing) needs "
                           "onnxruntime-gpu and a GPU")
def test_gpu_part_tiny(tmp_path):
    out = tmp_path / "rows.json"
    done = _run("--tiny", "--work", str(tmp_path), "--out", str(out), "--bert-batches", "2", "--llama-tokens", "1",
                "--resnet-batches", "2", "--budget", "0.5", "--rounds", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["cuda_graph"] for r in rows} == {"on", "off"}
    for r in rows:
        assert r["dense_ms"] > 0 and r["compiled_ms"] > 0 and r["rel_diff"] < 5e-3, r
