"""The per-target dense fallback: measured tables decide, options override, reasons are given."""

import numpy as np
import onnx
import pytest

from onnxsparse import format as fmt
from onnxsparse import targets
from onnxsparse.api import compile_model

TABLE = (
    # K=N=64: sparse faster at small M, slower at large M
    {"op": "gemm", "dtype": "float32", "m": 1, "k": 64, "n": 64, "sparse_us": 5.0, "dense_us": 8.0},
    {"op": "gemm", "dtype": "float32", "m": 1024, "k": 64, "n": 64, "sparse_us": 90.0, "dense_us": 60.0},
    # K=N=4096: sparse faster at every M
    {"op": "gemm", "dtype": "float32", "m": 1, "k": 4096, "n": 4096, "sparse_us": 5.0, "dense_us": 9.0},
    {"op": "gemm", "dtype": "float32", "m": 1024, "k": 4096, "n": 4096, "sparse_us": 50.0, "dense_us": 60.0},
)


@pytest.fixture
def table(monkeypatch):
    monkeypatch.setattr(targets, "load_table", lambda target: TABLE)


def test_decide_uses_nearest_shape_and_every_m_when_unknown(table):
    assert targets.decide("cpu", "float32", 4000, 4100).sparse
    slow = targets.decide("cpu", "float32", 64, 64)
    assert not slow.sparse and "slower than dense" in slow.reason and "M=1024" in slow.reason


def test_decide_uses_nearest_m_when_known(table):
    assert targets.decide("cpu", "float", 64, 64, m=2).sparse
    assert not targets.decide("cpu", "float32", 64, 64, m=800).sparse


def test_no_table_means_sparse_with_reason(monkeypatch):
    monkeypatch.setattr(targets, "load_table", lambda target: ())
    decision = targets.decide("cuda", "float16", 64, 64)
    assert decision.sparse and "no cuda measurements" in decision.reason


def test_unknown_target_rejected():
    with pytest.raises(ValueError, match="unknown target"):
        targets.make_policy("tpu")


def _model(m, k, n):
    rng = np.random.default_rng(0)
    w = fmt.prune_weight_magnitude(rng.standard_normal((k, n)).astype(np.float32), "kn")
    text = f"""
    <ir_version: 10, opset_import: ["" : 17]>
    g (float[{m}, {k}] x) => (float[{m}, {n}] y) {{ y = MatMul(x, w) }}
    """
    model = onnx.parser.parse_model(text)
    model.graph.initializer.append(onnx.numpy_helper.from_array(w, "w"))
    return model


def test_policy_keeps_slow_layer_dense_with_reason(table):
    result = compile_model(_model(1024, 64, 64), policy=targets.make_policy("cpu"))
    assert not result.rewritten
    assert "slower than dense on cpu" in result.layers[0].reason


def test_policy_rewrites_fast_layer(table):
    assert len(compile_model(_model(1, 64, 64), policy=targets.make_policy("cpu")).rewritten) == 1


def test_force_options_override_measurements(table):
    forced = targets.make_policy("cpu", force_sparse=["MatMul"])
    assert len(compile_model(_model(1024, 64, 64), policy=forced).rewritten) == 1
    dense = targets.make_policy("cpu", force_dense=["*"])
    result = compile_model(_model(1, 64, 64), policy=dense)
    assert not result.rewritten and result.layers[0].reason == "kept dense by --force-dense"


def test_unmeasured_dtype_stays_dense_and_bf16_uses_fp16(monkeypatch):
    table = ({"op": "gemm", "dtype": "float16", "m": 1, "k": 64, "n": 64, "sparse_us": 9.0, "dense_us": 8.0},)
    monkeypatch.setattr(targets, "load_table", lambda target: table)
    fp32 = targets.decide("cuda", "float32", 64, 64)
    assert not fp32.sparse and "no cuda measurements for float32" in fp32.reason
    bf16 = targets.decide("cuda", "bfloat16", 64, 64)
    assert not bf16.sparse and "float16 measurements standing for bfloat16" in bf16.reason


def test_cuda_needs_ten_percent_and_cpu_only_not_slower(monkeypatch):
    rows = ({"op": "gemm", "dtype": "float16", "m": 256, "k": 64, "n": 64, "sparse_us": 10.0, "dense_us": 10.5},)
    monkeypatch.setattr(targets, "load_table", lambda target: rows)
    cuda = targets.decide("cuda", "float16", 64, 64, m=256)
    assert not cuda.sparse and "less than 1.10x faster" in cuda.reason and "1.05x" in cuda.reason
    assert targets.decide("cpu", "float16", 64, 64, m=256).sparse


def test_cuda_conv_needs_conv_rows(monkeypatch):
    gemm_only = ({"op": "gemm", "dtype": "float16", "m": 256, "k": 64, "n": 64, "sparse_us": 50.0, "dense_us": 100.0},)
    monkeypatch.setattr(targets, "load_table", lambda target: gemm_only)
    conv = targets.decide("cuda", "float16", 64, 64, m=256, op="conv")
    assert not conv.sparse and "no cuda measurements for conv layers" in conv.reason
    assert targets.decide("cuda", "float16", 64, 64, m=256).sparse  # a MatMul of that shape
    assert targets.decide("cpu", "float16", 64, 64, m=256, op="conv").sparse  # cpu: GEMM rows cover convs
    with_conv = gemm_only + ({"op": "conv", "dtype": "float16", "m": 256, "k": 64, "n": 64, "sparse_us": 50.0,
                              "dense_us": 120.0},)
    monkeypatch.setattr(targets, "load_table", lambda target: with_conv)
    assert targets.decide("cuda", "float16", 64, 64, m=256, op="conv").sparse


def _model_symbolic_batch(reshape: bool):
    """x [batch, 64] @ w, or x [batch, 4, 16] reshaped to [-1, 64] first (the name is lost)."""
    rng = np.random.default_rng(0)
    w = fmt.prune_weight_magnitude(rng.standard_normal((64, 64)).astype(np.float32), "kn")
    if reshape:
        text = """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[batch, 4, 16] x) => (float[unk, 64] y) {
            s = Constant<value = int64[2] {-1, 64}>()
            r = Reshape(x, s)
            y = MatMul(r, w)
        }"""
    else:
        text = """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[batch, 64] x) => (float[batch, 64] y) { y = MatMul(x, w) }"""
    model = onnx.parser.parse_model(text)
    model.graph.initializer.append(onnx.numpy_helper.from_array(w, "w"))
    return model


@pytest.mark.parametrize("reshape", [False, True])
def test_dims_bind_symbolic_batch_for_the_choice(table, reshape):
    model = _model_symbolic_batch(reshape)
    unknown = compile_model(model, policy=targets.make_policy("cpu"))
    assert not unknown.rewritten and "M=1024" in unknown.layers[0].reason  # every M must be not slower
    small = compile_model(model, policy=targets.make_policy("cpu", dims={"batch": 2}))
    assert len(small.rewritten) == 1
    large = compile_model(model, policy=targets.make_policy("cpu", dims={"batch": 900}))
    assert not large.rewritten
    # The compiled model keeps the batch symbolic.
    dim = small.model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch"


@pytest.mark.parametrize("items, message", [(["batch"], "NAME=VALUE"), (["batch=0"], "positive"), (["=3"], "NAME")])
def test_parse_dims_rejects_bad_items(items, message):
    with pytest.raises(ValueError, match=message):
        targets.parse_dims(items)
    assert targets.parse_dims(["batch=32", "seq=384"]) == {"batch": 32, "seq": 384}


def test_cuda_needs_a_saving_above_the_floor(monkeypatch):
    rows = ({"op": "gemm", "dtype": "float16", "m": 1024, "k": 1024, "n": 4096, "sparse_us": 40.0, "dense_us": 50.0},)
    monkeypatch.setattr(targets, "load_table", lambda target: rows)
    assert targets.decide("cuda", "float16", 1024, 4096, m=1024).sparse  # saves 10 us
    small = targets.decide("cuda", "float16", 1024, 1024, m=1024)  # a quarter of the work: 2.5 us
    assert not small.sparse and "saves 2.5 us" in small.reason
    assert targets.decide("cuda", "float16", 1024, 1024, m=4096).sparse  # four times the rows: 10 us
    assert targets.decide("cpu", "float16", 1024, 1024, m=1024).sparse  # no per-op floor on cpu


# --- the bias pass the fold saves ------------------------------------------------------------------

# A row where the sparse GEMM alone is barely faster: 1.2 us saved at K=N=1024, M=4096.
EVEN_ROW = ({"op": "gemm", "dtype": "float16", "m": 4096, "k": 1024, "n": 1024, "sparse_us": 40.0, "dense_us": 41.2},)


def test_decide_counts_what_the_dense_layer_pays_beside_its_gemm(monkeypatch):
    monkeypatch.setattr(targets, "load_table", lambda target: EVEN_ROW)
    alone = targets.decide("cuda", "float16", 1024, 1024, m=4096)
    assert not alone.sparse and "1.03x" in alone.reason  # under the 1.10x cuda asks for
    extra = targets.bias_pass_us("cuda", 4096, 1024, 2)
    assert 7.0 < extra < 8.0  # 1 us + 16.8 MB at 2.6 TB/s
    counted = targets.decide("cuda", "float16", 1024, 1024, m=4096, dense_extra_us=extra)
    assert counted.sparse and "bias pass" in counted.reason
    # Without M the rows are not scaled to the layer, so nothing is counted.
    assert not targets.decide("cuda", "float16", 1024, 1024, dense_extra_us=extra).sparse
    assert targets.bias_pass_us("cpu", 4096, 1024, 2) == 0.0  # not modelled on cpu


def _matmul_bias_then(reader: str) -> onnx.ModelProto:
    """x [batch, 1024] @ w + b, then the given reader of the biased result."""
    rng = np.random.default_rng(1)
    w = fmt.prune_weight_magnitude(rng.standard_normal((1024, 1024)).astype(np.float16), "kn")
    body = {
        "Reshape": "s = Constant<value = int64[2] {-1, 1024}>()  y = Reshape(h, s)",
        "Relu": "y = Relu(h)",
        "Gelu": "y = Gelu(h)",  # ONNX Runtime fuses the bias into BiasGelu
        "LayerNorm": "r = Add(h, x)  y = LayerNormalization<axis=-1>(r, g, t)",  # into SkipLayerNormalization
        "output": "y = Identity(h)",
    }[reader]
    text = f"""
        <ir_version: 10, opset_import: ["" : 20]>
        g (float16[batch, 1024] x) => (float16[batch, 1024] y) {{
            p = MatMul(x, w)
            h = Add(p, b)
            {body}
        }}"""
    model = onnx.parser.parse_model(text)
    model.graph.initializer.extend([
        onnx.numpy_helper.from_array(w, "w"),
        onnx.numpy_helper.from_array(rng.standard_normal(1024).astype(np.float16), "b"),
        onnx.numpy_helper.from_array(np.ones(1024, np.float16), "g"),
        onnx.numpy_helper.from_array(np.zeros(1024, np.float16), "t"),
    ])
    return model


@pytest.mark.parametrize("reader, counted", [("Reshape", True), ("Relu", True), ("output", True),
                                             ("Gelu", False), ("LayerNorm", False)])
def test_policy_counts_the_bias_pass_only_where_the_dense_graph_runs_it(monkeypatch, reader, counted):
    monkeypatch.setattr(targets, "load_table", lambda target: EVEN_ROW)
    result = compile_model(_matmul_bias_then(reader), policy=targets.make_policy("cuda", dims={"batch": 4096}))
    (layer,) = result.layers
    assert layer.rewritten == counted, layer.reason
    if counted:
        assert layer.fused_bias is not None
    else:
        assert "1.03x" in layer.reason and "bias pass" not in layer.reason


@pytest.mark.parametrize("op", ["gemm", "conv"])
def test_shipped_cuda_table_reproduces_its_own_measurements(op):
    """At every measured point of the shipped CUDA table, the choice is what the rows there say: sparse
    exactly when each row at that (M, K, N) is at least MIN_SPEEDUP faster and saves MIN_SAVING_US."""
    rows = [r for r in targets.load_table("cuda") if r.get("op", "gemm") == op and r["dtype"] == "float16"]
    assert rows, f"perf_cuda.json has no fp16 {op} rows"
    points = {(r["m"], r["k"], r["n"]) for r in rows}
    chosen = 0
    for m, k, n in points:
        here = [r for r in rows if (r["m"], r["k"], r["n"]) == (m, k, n)]
        expect = all(r["dense_us"] / r["sparse_us"] >= targets.MIN_SPEEDUP["cuda"]
                     and r["dense_us"] - r["sparse_us"] >= targets.MIN_SAVING_US["cuda"] for r in here)
        decision = targets.decide("cuda", "float16", k, n, m=m, op=op)
        assert decision.sparse == expect, (m, k, n, decision.reason)
        chosen += decision.sparse
    # The table holds both outcomes (a table that chose everything or nothing would decide nothing).
    assert 0 < chosen < len(points)
