"""benchmarks/int8_e2e.py on a tiny transformers BERT: ``--cpu --tiny`` (export, prune, quantize_static,
compile, ONNX Runtime's QDQ run against the compiled model on the library's kernels, the JSON rows)
and ``--cuda --tiny --cpu-ep`` (the CUDA flow's models and outputs on the CPU EP: the fp16 baseline,
the compiled int8 model and the dense QDQ model). The timing in the CUDA EP needs a GPU."""

from __future__ import annotations

import json
import subprocess
import sys

import onnxruntime as ort
import pytest
from conftest import REPO, library_available

pytest.importorskip("torch", reason="the script exports from PyTorch (pip install torch)")
pytest.importorskip("transformers", reason="the script builds BERT with transformers")
pytestmark = [pytest.mark.kernels,
              pytest.mark.skipif(not library_available(), reason="the onnxsparse custom-op library is not built")]

SCRIPT = REPO / "benchmarks" / "int8_e2e.py"
TOKENS = [1, 4, 16]


def _run(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


def _rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("int8_e2e")


@pytest.fixture(scope="module")
def cpu_run(work):
    out = work / "cpu.json"
    done = _run("--cpu", "--tiny", "--work", work, "--out", out, "--budget", "0.2", "--repeats", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    return _rows(done.stdout), json.loads(out.read_text())


def test_cpu_rows(cpu_run):
    rows, record = cpu_run
    assert [r["tokens"] for r in rows] == TOKENS
    assert record["rows"] == rows  # --out holds what stdout printed
    assert record["command"].startswith("python3 benchmarks/int8_e2e.py --cpu --tiny")
    for r in rows:
        assert r["mode"] == "cpu" and r["model"] == "bert-tiny" and r["batch"] == 1 and r["threads"] == 2
        assert r["ort_qdq_ms"] > 0 and r["onnxsparse_int8_ms"] > 0 and r["repeats"] >= 3
        assert r["speedup"] == pytest.approx(r["ort_qdq_ms"] / r["onnxsparse_int8_ms"], rel=0.02)
        # every linear layer of the 2 encoder layers; the 4 attention products stay, with their reason
        assert r["layers_int8_sparse"] == "12/16"
        assert list(r["left_dense"].values()) == [4] and "not a constant weight" in next(iter(r["left_dense"]))
        # the compiled model computes what ONNX Runtime's run of the QDQ model computes
        assert r["rel_l2_vs_ort_qdq"] < 1e-3
        assert 0 < r["rel_l2_vs_fp32"] < 0.2 and r["ort_qdq_rel_l2_vs_fp32"] < 0.2
        assert set(r["machine"]["isa_flags"]) == {"avx2", "avx512", "vnni"}
        assert r["versions"]["onnxruntime"] == ort.__version__


def test_reduce_range_writes_7_bit_weights(work, cpu_run):
    """``--reduce-range`` quantizes with reduce_range=True: every int8 weight within [-64, 64] (the
    library's AVX2 byte-pair path), beside the default model's full-range weights."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    sys.path.insert(0, str(SCRIPT.parent))
    import int8_e2e

    pruned = next(p for p in work.glob("*.pruned.onnx") if "fp32" in p.name)
    seven = int8_e2e.quantize(pruned, int8_e2e.TINY_BERT["vocab_size"], (1, int8_e2e.TINY_SEQ), 2, reduce_range=True)
    assert seven.name.endswith(".qdq7.onnx")

    def widest(path) -> int:
        weights = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
                   if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
        assert len(weights) >= 12
        return max(int(np.abs(w.astype(np.int32)).max()) for w in weights)

    assert widest(seven) <= 64
    assert widest(pruned.with_name(pruned.stem + ".qdq.onnx")) > 64


def test_cuda_flow_on_the_cpu_ep(work, cpu_run):
    """Reuses the CPU run's export, pruned and quantized models (same tiny configuration)."""
    pytest.importorskip("onnxconverter_common", reason="--int8-graph fp16 converts with onnxconverter-common")
    import onnx

    done = _run("--cuda", "--tiny", "--cpu-ep", "--work", work, "--int8-graph", "fp32")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _rows(done.stdout)
    done = _run("--cuda", "--tiny", "--cpu-ep", "--work", work)  # the default: --int8-graph fp16
    assert done.returncode == 0, done.stderr[-3000:]
    fp16_rows = _rows(done.stdout)
    assert [r["int8_graph"].split(" ")[0] for r in rows + fp16_rows] == ["every"] * 2 + ["weight"] * 3
    rows += fp16_rows
    pair = [("cuda-logic-on-cpu-ep", "onnxsparse int8 (compiled QDQ)"), ("cuda-logic-on-cpu-ep", "ONNX Runtime dense QDQ")]
    assert [(r["mode"], r["candidate"]) for r in rows] == pair + [
        ("cuda-logic-on-cpu-ep", "onnxsparse int8 (compiled QDQ, fp16 form)")] + pair
    # the fp16 form gives the same outputs as the ops with Casts after them
    assert fp16_rows[0]["rel_l2_vs_fp16"] == pytest.approx(fp16_rows[1]["rel_l2_vs_fp16"], rel=1e-3)
    folded = onnx.load(str(next(work.glob("*.qdqw.sparse.fp16.folded.onnx")))).graph
    fp16_ops = [n for n in folded.node if n.op_type == "QMatMulCompress"
                and any(i.name == n.input[1] and i.data_type == onnx.TensorProto.FLOAT16 for i in folded.initializer)]
    assert len(fp16_ops) == 12
    # fp16 graph: 12 sparse int8 ops reading QuantizeLinear's output, no quantized attention product,
    # and no float32 MatMul left (the attention products run in fp16)
    graph = onnx.load(str(next(work.glob("*.qdqw.sparse.fp16.onnx")))).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QMatMulCompress") == 12 and ops.count("QuantizeLinear") == 8 and "Cast" in ops
    assert [n.op_type for n in folded.node].count("Cast") == ops.count("Cast") - 12  # one after each op, folded
    types = {vi.name: vi.type.tensor_type.elem_type for vi in graph.value_info}
    products = [n for n in graph.node if n.op_type == "MatMul"]
    assert len(products) == 4 and all(types.get(n.output[0]) == onnx.TensorProto.FLOAT16 for n in products)
    for r in rows:
        assert "error" not in r, r
        assert r["input"] == "2x16" and r["layers_int8_sparse"] == "12/16" and r["finite"]
        assert r["shape_out"] == [2, 16, 64]
        assert 0 < r["rel_l2_vs_fp16"] < 0.2  # int8 against the fp16 baseline: the quantization's loss
    try:
        import onnxconverter_common  # noqa: F401
    except ImportError:  # the script exports the fp16 model instead
        assert rows[0]["fp16_baseline_made"].startswith("exported in fp16")
    else:
        assert rows[0]["fp16_baseline_made"].startswith("pruned fp32 model converted to fp16")
        assert list(work.glob("*fp16*.onnx")), "no fp16 baseline written"


def test_bad_arguments_give_one_line(work):
    for args, fragment in [(["--cpu", "--isa", "sse"], "unknown --isa sse"),
                           (["--cpu", "--tokens", "a"], "comma-separated integers"),
                           (["--cpu", "--cpu-ep"], "--cpu-ep goes with --cuda")]:
        done = _run(*args, "--work", work)
        assert done.returncode == 2 and fragment in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        done = _run("--cuda", "--work", work)
        assert done.returncode == 2 and "no CUDAExecutionProvider" in done.stderr
