"""onnxsparse tune and compile --target: the machine key, the cache, and the per-layer and whole-model
decisions, all from fake measurements (nothing here is timed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import REPO, make_model, random_input, sparse_weight

from onnxsparse import OnnxSparseError
from onnxsparse.api import check_model, compile_model
from onnxsparse.hardware import HardwareKey, isa_from_flags, matches_hardware, parse_cpuinfo
from onnxsparse.tune import choice, tuner
from onnxsparse.tune.cache import TuneCache
from onnxsparse.tune.policy import MeasuredPolicy, model_fingerprint, resolve_target
from onnxsparse.tune.problems import (
    bind_inputs,
    distinct,
    find_problems,
    inferred_shapes,
    layer_model,
    layer_weight_bytes,
    model_weight_bytes,
    parse_input_shapes,
    working_set_copies,
)
from onnxsparse.tune.timing import Timing, summarize

HEAD = '<ir_version: 10, opset_import: ["" : 17]>'
KEY = HardwareKey(provider="cpu", cpu="Test CPU 9000", vendor="GenuineTest", family=25, model=17, stepping=1,
                  isa="avx2", threads=1, onnxruntime="1.32.0", library="0.1.0+abc")


def mlp(batch="batch") -> onnx.ModelProto:
    """Two MatMuls (64->128 with a bias Add and Relu, 128->64), one Conv-free chain."""
    return make_model(
        f"""{HEAD} g (float[{batch},64] x) => (float[{batch},64] y) {{
            h = MatMul(x, W1)
            hb = Add(h, B1)
            r = Relu(hb)
            y = MatMul(r, W2)
        }}""",
        W1=sparse_weight((64, 128), "kn"), B1=np.zeros(128, np.float32), W2=sparse_weight((128, 64), "kn", seed=1),
    )


def fake(ratio: float, dense_us: float = 100.0, low: float | None = None, high: float | None = None) -> dict:
    return {"dense_us": dense_us, "sparse_us": dense_us / ratio, "ratio": ratio,
            "ratio_low": ratio - 0.01 if low is None else low, "ratio_high": ratio + 0.01 if high is None else high,
            "pairs": 20, "copies": 1}


def tuned_cache(tmp_path, model, ratios: dict[str, float], key=KEY, dims=None) -> TuneCache:
    """A cache holding fake measurements for the model's problems, by layer name."""
    layers = find_problems(model, check_model(model).layers, inferred_shapes(bind_inputs(model, dims or {"batch": 4})))
    cache = TuneCache(tmp_path / "tune.json")
    for layer in layers:
        p = layer.problem
        cache.put_layer(key, p.key, {"problem": p.to_dict(), "base": p.base, "key": p.key, **fake(ratios[layer.node])})
    cache.save()
    return TuneCache.load(tmp_path / "tune.json")


# --- the key ---------------------------------------------------------------------------------


def test_key_id_changes_with_everything_that_decides_speed():
    ids = {KEY.id}
    for change in ({"threads": 2}, {"isa": "avx512"}, {"stepping": 2}, {"onnxruntime": "1.31.1"},
                   {"library": "0.1.0+def"}, {"cpu": "Other CPU"}, {"model": 1}):
        ids.add(HardwareKey(**{**KEY.to_dict(), **change}).id)
    assert len(ids) == 8
    cuda = HardwareKey(provider="cuda", gpu="NVIDIA H200", compute_capability="9.0", onnxruntime="1.32.0", library="x")
    assert "NVIDIA H200" in cuda.id and "sm9.0" in cuda.id
    assert HardwareKey.from_dict({**KEY.to_dict(), "unknown": 1}) == KEY


def test_key_says_whether_threads_spin_where_that_decides_speed():
    """tune --no-spinning times with sleeping intra-op threads: not the same measurement as spinning
    ones, so not the same cache entry; with one thread, or on CUDA, there is no pool to spin."""
    two = HardwareKey(**{**KEY.to_dict(), "threads": 2})
    asleep = HardwareKey(**{**two.to_dict(), "spinning": False})
    assert asleep.id != two.id and asleep.id.endswith(two.id.split(":t2:", 1)[1])
    assert "not spinning" in asleep.short
    assert HardwareKey.from_dict({k: v for k, v in two.to_dict().items() if k != "spinning"}).id == two.id
    one = HardwareKey(**{**KEY.to_dict(), "threads": 1})
    assert HardwareKey(**{**one.to_dict(), "spinning": False}).id == one.id
    cuda = HardwareKey(provider="cuda", gpu="NVIDIA H200", compute_capability="9.0", threads=2, spinning=False)
    assert cuda.spinning and cuda.id == HardwareKey(**{**cuda.to_dict(), "spinning": True}).id


def test_a_table_matches_only_its_hardware():
    table = {"provider": "cpu", "cpu": "Test CPU 9000", "vendor": "GenuineTest", "family": 25, "model": 17, "isa": "avx2"}
    assert matches_hardware(KEY, table)
    assert matches_hardware(HardwareKey(**{**KEY.to_dict(), "threads": 2, "library": "other"}), table)
    assert not matches_hardware(HardwareKey(**{**KEY.to_dict(), "isa": "avx512"}), table)
    assert not matches_hardware(HardwareKey(**{**KEY.to_dict(), "model": 1}), table)  # Zen 3 against Zen 4
    assert not matches_hardware(KEY, {})  # an unkeyed table is never applied
    assert not matches_hardware(KEY, {**table, "provider": "cuda"})


def test_shipped_tables_name_their_hardware():
    from onnxsparse.tune.policy import load_shipped_table

    cpu, cuda = load_shipped_table("cpu")["hardware"], load_shipped_table("cuda")["hardware"]
    assert (cpu["family"], cpu["model"], cpu["isa"]) == (25, 17, "avx512")
    assert (cuda["gpu"], cuda["compute_capability"]) == ("NVIDIA H200", "9.0")


def test_cpuinfo_and_isa_rule():
    info = parse_cpuinfo("vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD  EPYC 7B13\n"
                         "stepping\t: 0\nflags\t\t: fpu avx2 fma f16c\n")
    assert (info["vendor"], info["family"], info["model"], info["model_name"]) == ("AuthenticAMD", 25, 1, "AMD EPYC 7B13")
    assert isa_from_flags(info["flags"]) == "avx2"
    assert isa_from_flags(frozenset({"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"})) == "avx512"
    assert isa_from_flags(frozenset({"avx2"})) == "portable"


# --- the cache -------------------------------------------------------------------------------


def test_cache_round_trip_merges_and_writes_atomically(tmp_path):
    path = tmp_path / "sub" / "tune.json"
    first, second = TuneCache(path), TuneCache(path)
    first.put_layer(KEY, "a", fake(1.5))
    first.save()
    other = HardwareKey(**{**KEY.to_dict(), "threads": 2})
    second.put_layer(other, "b", fake(0.8))  # a second writer that never read the first's entry
    second.save()
    loaded = TuneCache.load(path)
    assert loaded.layer(KEY, "a")["ratio"] == 1.5 and loaded.layer(other, "b")["ratio"] == 0.8
    assert loaded.layer(other, "a") is None
    assert [p.name for p in path.parent.iterdir()] == ["tune.json"]  # no temporary file left


@pytest.mark.parametrize("content, why", [("{not json", "unreadable"), ('{"format": "x"}', "not an onnxsparse"),
                                          ('{"format": "onnxsparse-tune", "version": 99}', "version 99")])
def test_a_bad_cache_is_ignored_with_a_warning(tmp_path, content, why):
    path = tmp_path / "tune.json"
    path.write_text(content)
    cache = TuneCache.load(path)
    assert cache.machines() == [] and why in cache.warning


def test_default_cache_place_follows_xdg(monkeypatch, tmp_path):
    from onnxsparse.tune.cache import default_path

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_path() == tmp_path / "onnxsparse" / "tune.json"


# --- problems --------------------------------------------------------------------------------


def test_problems_carry_shape_bias_and_activation_and_dedupe():
    conv = make_model(
        f"""{HEAD} g (float[1,8,16,16] x) => (float[1,8,16,16] y) {{
            a = Conv<kernel_shape=[3,3], pads=[1,1,1,1]>(x, W, B)
            b = Relu(a)
            c = Conv<kernel_shape=[3,3], pads=[1,1,1,1]>(b, W2, B)
            d = Relu(c)
            y = Conv<kernel_shape=[3,3], pads=[1,1,1,1]>(d, W3, B)
        }}""",
        W=sparse_weight((8, 8, 3, 3), "oihw"), W2=sparse_weight((8, 8, 3, 3), "oihw", seed=1),
        W3=sparse_weight((8, 8, 3, 3), "oihw", seed=2), B=np.zeros(8, np.float32),
    )
    layers = find_problems(conv, check_model(conv).layers, inferred_shapes(conv))
    groups = distinct(layers)
    assert [len(v) for v in groups.values()] == [2, 1]  # two Conv+Relu share one problem
    first, last = list(groups)
    assert first.activation == "Relu" and first.bias and first.x == (1, 8, 16, 16)
    assert last.activation == "" and "pads=1,1,1,1" in last.key
    dense = layer_model(groups[first][0], copies=3)
    assert [n.op_type for n in dense.graph.node] == ["Conv", "Relu"] * 3
    onnx.checker.check_model(dense, full_check=True)


def test_a_layer_is_timed_among_as_many_weight_bytes_as_its_model_holds():
    """On CPU a layer is timed in a model of copies holding about the model's weight bytes, so that
    its weights come from the cache level they would in the model; capped."""
    model = make_model(
        f"""{HEAD} g (float[4,64] x) => (float[4,32] y) {{
            h = MatMul(x, W)
            y = MatMul(h, W2)
        }}""",
        W=sparse_weight((64, 64), "kn"), W2=sparse_weight((64, 32), "kn", seed=1),
    )
    assert model_weight_bytes(model) == (64 * 64 + 64 * 32) * 4
    embedded = make_model(
        f"""{HEAD} g (int64[4] ids) => (float[4,64] y) {{
            e = Gather(E, ids)
            y = MatMul(e, W)
        }}""",
        E=np.zeros((1000, 64), np.float32), W=sparse_weight((64, 64), "kn"),
    )
    assert model_weight_bytes(embedded) == 64 * 64 * 4  # the embedding table gives a few rows a run
    quantized_table = make_model(
        f"""{HEAD} g (int64[4] ids) => (float[4,64] y) {{
            t = DequantizeLinear(Q, S)
            e = Gather(t, ids)
            y = MatMul(e, W)
        }}""",
        Q=np.zeros((1000, 64), np.int8), S=np.float32(0.1), W=sparse_weight((64, 64), "kn"),
    )
    assert model_weight_bytes(quantized_table) == 64 * 64 * 4 + 4  # a QDQ table too (its scale counts)
    layers = find_problems(model, check_model(model).layers, inferred_shapes(model))
    problem = layers[0].problem
    assert layer_weight_bytes(problem) == 64 * 64 * 4
    assert working_set_copies(problem, 0) == 1
    assert working_set_copies(problem, 64 * 64 * 4) == 1
    assert working_set_copies(problem, 28 * 64 * 64 * 4 + 1) == 29
    assert working_set_copies(problem, 10**12) == 64  # WORKING_SET_COPIES
    big = layers[0].problem.__class__(**{**problem.__dict__, "weight": (4096, 8192)})  # 128 MiB fp32
    assert working_set_copies(big, 10**12) == 2  # WORKING_SET_BYTES: 256 MiB


@pytest.mark.kernels
def test_measure_problem_times_the_working_set_on_cpu():
    from conftest import library_available
    from onnxsparse.session import timing_options

    if not library_available():
        pytest.skip("the onnxsparse custom-op library is not built")
    model = make_model(
        f"""{HEAD} g (float[4,64] x) => (float[4,64] y) {{
            y = MatMul(x, W)
        }}""",
        W=sparse_weight((64, 64), "kn"),
    )
    layer = find_problems(model, check_model(model).layers, inferred_shapes(model))[0]
    plain = tuner.measure_problem(layer, "cpu", lambda: timing_options(1), 0.02, "cpu")
    assert plain["copies"] == 8  # copies_for: a tiny layer, as many as it allows
    record = tuner.measure_problem(layer, "cpu", lambda: timing_options(1), 0.02, "cpu", weight_bytes=20 * 64 * 64 * 4)
    assert record["copies"] == 20 and record["weight_bytes"] == 20 * 64 * 64 * 4
    assert record["dense_us"] > 0 and record["sparse_us"] > 0


def test_a_bias_that_onnx_runtime_fuses_downstream_is_free_on_both_sides():
    model = make_model(
        f"""{HEAD} g (float[4,64] x) => (float[4,64] y, float[4,64] z) {{
            h = MatMul(x, W)
            y = Add(h, B)
            k = MatMul(x, W2)
            kb = Add(k, B)
            z = LayerNormalization(kb, S, B)
        }}""",
        W=sparse_weight((64, 64), "kn"), W2=sparse_weight((64, 64), "kn", seed=1), B=np.zeros(64, np.float32),
        S=np.ones(64, np.float32),
    )
    layers = find_problems(model, check_model(model).layers, inferred_shapes(model))
    assert [layer.problem.bias for layer in layers] == [True, False]
    assert layers[1].fused_bias


def encoder_block() -> onnx.ModelProto:
    """A transformer block's two bias Adds as torch.onnx's dynamo exporter writes them: the output
    projection's bias, then a residual Add and LayerNormalization (ONNX Runtime fuses the two Adds
    into SkipLayerNormalization), and the FFN's bias before an erf-decomposed GELU (0.5 * (1 + erf(x /
    sqrt 2)) * x, which ONNX Runtime 1.3x does not fuse, so the bias stays a pass of its own)."""
    model = make_model(
        f"""{HEAD} g (float[batch,8,64] x) => (float[batch,8,64] y) {{
            o = MatMul(x, W1)
            ob = Add(o, B1)
            res = Add(ob, x)
            ln = LayerNormalization(res, S, B1)
            u = MatMul(ln, W2)
            ub = Add(u, B2)
            d = Div(ub, R2)
            e = Erf(d)
            e1 = Add(e, ONE)
            h = Mul(HALF, e1)
            g = Mul(ub, h)
            y = MatMul(g, W3)
        }}""",
        W1=sparse_weight((64, 64), "kn"), B1=np.full(64, 0.1, np.float32), S=np.ones(64, np.float32),
        W2=sparse_weight((64, 128), "kn", seed=1), B2=np.full(128, 0.1, np.float32),
        R2=np.array(1.4142135, np.float32), ONE=np.array(1.0, np.float32), HALF=np.array(0.5, np.float32),
        W3=sparse_weight((128, 64), "kn", seed=2),
    )
    names = {'o': 'o_proj', 'ob': 'o_bias', 'res': 'residual', 'ln': 'norm', 'u': 'up_proj', 'ub': 'up_bias', 'd': 'gelu_div', 'e': 'gelu_erf', 'e1': 'gelu_add', 'h': 'gelu_half', 'g': 'gelu', 'y': 'down_proj'}
    for node in model.graph.node:
        node.name = names[node.output[0]]
    return model


def test_tune_learns_which_bias_adds_onnx_runtime_fuses():
    """The heuristic takes any Add reader but a plain one as a fusion (both biases free); ONNX Runtime
    itself fuses only the residual one, so the FFN's bias is timed with its layer."""
    from onnxsparse.session import timing_options
    from onnxsparse.tune.problems import ort_fused_adds

    model = encoder_block()
    fused = ort_fused_adds(model, "cpu", lambda: timing_options(1))
    assert fused is not None and "o_bias" in fused and "up_bias" not in fused
    shapes = inferred_shapes(bind_inputs(model, {"batch": 2}))
    guessed = find_problems(model, check_model(model).layers, shapes)
    learnt = find_problems(model, check_model(model).layers, shapes, fused)
    assert [(p.node, p.fused_bias, p.problem.bias) for p in guessed][:2] == [("o_proj", True, False), ("up_proj", True, False)]
    assert [(p.node, p.fused_bias, p.problem.bias) for p in learnt][:2] == [("o_proj", True, False), ("up_proj", False, True)]
    assert [step.name for step in learnt[1].epilogue] == ["up_bias"]
    # An unnamed or repeated Add name: nothing is learnt (the readers decide, as before).
    unnamed = onnx.ModelProto()
    unnamed.CopyFrom(model)
    unnamed.graph.node[1].name = ""
    assert ort_fused_adds(unnamed, "cpu", lambda: timing_options(1)) is None


def test_tune_records_the_fused_adds_for_compile_target(tmp_path, monkeypatch):
    """compile --target finds the problems tune timed (the same keys), through the cache's model record."""
    model = encoder_block()
    timed = {}

    def fake_measure(layer, provider, options, budget_s, clock="wall", weight_bytes=0):
        p = layer.problem
        timed[layer.node] = p.key
        return {"problem": p.to_dict(), "base": p.base, "key": p.key, "clock": clock, **fake(1.3)}

    monkeypatch.setattr(tuner, "measure_problem", fake_measure)
    monkeypatch.setattr(tuner, "host_key", lambda provider, threads, isa=None, spinning=True:
                        HardwareKey(**{**KEY.to_dict(), "threads": threads, "spinning": spinning}))
    cache = TuneCache(tmp_path / "tune.json")
    tuner.tune_model(model, "cpu", 1, {"batch": 2}, cache=cache, whole_model=False)
    assert "Add[128]" in timed["up_proj"] and "Add" not in timed["o_proj"]
    record = TuneCache.load(tmp_path / "tune.json").model(KEY, model_fingerprint(model))
    assert "o_bias" in record["fused_adds"] and "up_bias" not in record["fused_adds"]
    policy = MeasuredPolicy("cpu", KEY, TuneCache.load(tmp_path / "tune.json"), {"batch": 2})
    policy.prepare(model)
    assert {node: layer.problem.key for node, layer in policy.problems.items()} == timed
    result = compile_model(model, policy=policy)
    assert sorted(d.record.node for d in result.rewritten) == ["down_proj", "o_proj", "up_proj"]
    # A later tune of the model reads the recorded set instead of opening ONNX Runtime again.
    monkeypatch.setattr(tuner, "ort_fused_adds", lambda *a: pytest.fail("fused adds learnt twice"))
    again = tuner.tune_model(model, "cpu", 1, {"batch": 2}, cache=TuneCache.load(tmp_path / "tune.json"),
                             whole_model=False)
    assert all(p.cached for p in again.problems) and again.choices["up_proj"].sparse


def test_problems_of_a_model_with_external_data_read_bias_and_norms_from_the_file(tmp_path):
    """BERT-style exports keep every tensor (biases, LayerNorm parameters) in the data file; the
    front door makes their locations absolute, which onnx's own reader refuses. Found on a
    transformers BERT-large: `compile --target cuda --input-shapes` stopped with an internal error."""
    model = make_model(
        f"""{HEAD} g (float[4,512] x) => (float[4,512] z) {{
            h = MatMul(x, W)
            kb = Add(h, B)
            r = Relu(kb)
            z = LayerNormalization(r, S, B)
        }}""",
        W=sparse_weight((512, 512), "kn"), B=np.full(512, 0.5, np.float32), S=np.ones(512, np.float32),
    )
    path = tmp_path / "ext.onnx"
    onnx.save_model(onnx.ModelProto.FromString(model.SerializeToString()), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    done = cli("compile", str(path), "-o", str(tmp_path / "out.onnx"), "--target", "cuda", "--input-shapes",
               "x:[4,512]", "--json", "-q")
    assert done.returncode == 0, done.stderr
    assert "internal error" not in done.stderr
    from onnxsparse.io import open_model

    opened = open_model(path)
    from_file = find_problems(opened, check_model(opened).layers, inferred_shapes(opened))
    in_memory = find_problems(model, check_model(model).layers, inferred_shapes(model))
    assert [layer.problem for layer in from_file] == [layer.problem for layer in in_memory]
    assert from_file[0].problem.bias


def test_unbound_dimensions_are_one_clear_error():
    with pytest.raises(OnnxSparseError, match=r"'x' dimension 0 \('batch'\).*--dim"):
        bind_inputs(mlp(), {})
    bound = bind_inputs(mlp(), {}, {"x": [3, 64]})
    assert bound.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    with pytest.raises(OnnxSparseError, match="not an input"):
        bind_inputs(mlp(), {}, {"nope": [1]})
    assert parse_input_shapes(["x:[1,3,48,320]"]) == {"x": [1, 3, 48, 320]}
    for bad in ("x[1,2]", "x:[0]", "x:[a]"):
        with pytest.raises(ValueError):
            parse_input_shapes([bad])


# --- decisions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record, provider, sparse, fragment",
    [(fake(1.5), "cpu", True, "1.50x"), (fake(0.9), "cpu", False, "slower than dense"),
     (fake(1.02), "cpu", False, "under the 1.03x"), (fake(1.2, low=0.99), "cpu", False, "not clearly faster"),
     (fake(1.5, dense_us=6.0), "cuda", False, "under 4 us"), (fake(1.5, dense_us=60.0), "cuda", True, "1.50x")],
)
def test_judge(record, provider, sparse, fragment):
    got, reason = choice.judge(record, provider)
    assert got is sparse and fragment in reason


def test_policy_uses_this_machines_tuned_measurements(tmp_path):
    model = mlp()
    cache = tuned_cache(tmp_path, model, {"<MatMul -> h>": 1.4, "<MatMul -> y>": 0.8})
    policy = MeasuredPolicy("cpu", KEY, cache, {"batch": 4}, table={})
    result = compile_model(model, policy=policy)
    assert [d.record.node for d in result.rewritten] == ["<MatMul -> h>"]
    first, second = policy.choices["<MatMul -> h>"], policy.choices["<MatMul -> y>"]
    assert (first.source, round(first.ratio, 2), round(first.saved_us, 1)) == ("tuned", 1.4, 28.6)
    assert second.source == "tuned" and "slower than dense" in second.reason


def test_policy_with_a_symbolic_batch_needs_every_tuned_shape_faster(tmp_path):
    model = mlp()
    cache = tuned_cache(tmp_path, model, {"<MatMul -> h>": 1.4, "<MatMul -> y>": 1.4}, dims={"batch": 4})
    layers = find_problems(model, check_model(model).layers, inferred_shapes(bind_inputs(model, {"batch": 64})))
    for layer in layers:  # at batch 64 the second layer loses
        p = layer.problem
        ratio = 1.3 if layer.node == "<MatMul -> h>" else 0.9
        cache.put_layer(KEY, p.key, {"problem": p.to_dict(), "base": p.base, "key": p.key, **fake(ratio)})
    policy = MeasuredPolicy("cpu", KEY, cache, table={})
    compile_model(model, policy=policy)
    assert policy.choices["<MatMul -> h>"].sparse and "of 2 tuned shapes" in policy.choices["<MatMul -> h>"].reason
    assert not policy.choices["<MatMul -> y>"].sparse and "x=64x128" in policy.choices["<MatMul -> y>"].reason


def test_unmeasured_layers_stay_dense_and_say_why(tmp_path):
    policy = MeasuredPolicy("cpu", KEY, TuneCache(tmp_path / "none.json"), {"batch": 4},
                            table={"hardware": {"provider": "cpu", "cpu": "Elsewhere CPU", "family": 6, "model": 85,
                                                "isa": "avx512"}, "records": []})
    result = compile_model(mlp(), policy=policy)
    assert not result.rewritten
    reason = policy.choices["<MatMul -> h>"].reason
    assert "not measured on Test CPU 9000" in reason and "run onnxsparse tune" in reason
    assert "measured on Elsewhere CPU" in reason


def test_a_table_of_this_hardware_is_used_when_nothing_is_tuned(tmp_path):
    table = {"hardware": {"provider": "cpu", "id": "test", "cpu": "Test CPU 9000", "family": 25, "model": 17,
                          "isa": "avx2"}, "records": []}
    policy = MeasuredPolicy("cpu", KEY, TuneCache(tmp_path / "none.json"), {"batch": 4}, table=table)
    compile_model(mlp(), policy=policy)
    assert {c.source for c in policy.choices.values()} == {"table"}


def test_the_whole_model_verdict_keeps_its_layers_dense(tmp_path):
    model = mlp()
    cache = tuned_cache(tmp_path, model, {"<MatMul -> h>": 1.4, "<MatMul -> y>": 1.2})
    cache.put_model(KEY, model_fingerprint(model), {"runs": {"x=4x64": {
        "dense_layers": ["<MatMul -> y>"], "ratio_before": 0.95, "ratio": 1.04}}})
    policy = MeasuredPolicy("cpu", KEY, cache, {"batch": 4}, table={})
    result = compile_model(model, policy=policy)
    assert [d.record.node for d in result.rewritten] == ["<MatMul -> h>"]
    dropped = policy.choices["<MatMul -> y>"]
    assert dropped.source == "whole-model" and "0.95x" in dropped.reason and "1.04x" in dropped.reason
    other_shape = MeasuredPolicy("cpu", KEY, cache, {"batch": 8}, table={})
    compile_model(model, policy=other_shape)  # the verdict of batch 4 says nothing about batch 8
    assert other_shape.verdict is None


def test_whole_model_check_drops_the_weakest_layers_until_not_slower(tmp_path, monkeypatch):
    """Fake timings: the compiled model is 0.95x while the layer saving least is sparse, 1.05x without it."""
    model = mlp()
    cache = tuned_cache(tmp_path, model, {"<MatMul -> h>": 1.4, "<MatMul -> y>": 1.1})
    seen = []

    def fake_time(dense, sparse, feeds, provider, options, budget_s, clock="wall"):
        kinds = [n.op_type for n in onnx.load_from_string(sparse).graph.node]
        seen.append(kinds.count("MatMulCompress"))
        ratio = 0.95 if kinds.count("MatMulCompress") == 2 else 1.05
        return summarize([ratio * 1e-3] * 8, [1e-3] * 8)

    monkeypatch.setattr(tuner, "_time_models", fake_time)
    policy = MeasuredPolicy("cpu", KEY, cache, {"batch": 4}, use_model_verdict=False, table={})
    verdict = tuner.check_whole_model(model, bind_inputs(model, {"batch": 4}), policy, "cpu", None, 1.0,
                                      lambda *a, **k: None)
    assert seen == [2, 1]
    assert verdict["dense_layers"] == ["<MatMul -> y>"]  # saved 9.1 us per call against 28.6
    assert round(verdict["ratio_before"], 2) == 0.95 and round(verdict["ratio"], 2) == 1.05


def test_whole_model_check_gives_up_to_dense(tmp_path, monkeypatch):
    model = mlp()
    cache = tuned_cache(tmp_path, model, {"<MatMul -> h>": 1.4, "<MatMul -> y>": 1.1})
    monkeypatch.setattr(tuner, "_time_models", lambda *a, **k: summarize([0.9e-3] * 8, [1e-3] * 8))
    policy = MeasuredPolicy("cpu", KEY, cache, {"batch": 4}, use_model_verdict=False, table={})
    verdict = tuner.check_whole_model(model, bind_inputs(model, {"batch": 4}), policy, "cpu", None, 1.0,
                                      lambda *a, **k: None)
    assert sorted(verdict["dense_layers"]) == ["<MatMul -> h>", "<MatMul -> y>"] and verdict["ratio"] == 1.0


def test_tune_model_times_each_distinct_problem_once_and_reuses_the_cache(tmp_path, monkeypatch):
    model = make_model(
        f"""{HEAD} g (float[batch,64] x) => (float[batch,64] y) {{
            a = MatMul(x, W1)
            y = MatMul(a, W2)
        }}""",
        W1=sparse_weight((64, 64), "kn"), W2=sparse_weight((64, 64), "kn", seed=1),
    )
    calls = []

    def fake_measure(layer, provider, options, budget_s, clock="wall", weight_bytes=0):
        calls.append(layer.problem.key)
        p = layer.problem
        return {"problem": p.to_dict(), "base": p.base, "key": p.key, "clock": clock, **fake(1.3)}

    monkeypatch.setattr(tuner, "measure_problem", fake_measure)
    monkeypatch.setattr(tuner, "host_key", lambda provider, threads, isa=None, spinning=True:
                        HardwareKey(**{**KEY.to_dict(), "threads": threads, "spinning": spinning}))
    monkeypatch.setattr(tuner, "_time_models", lambda *a, **k: summarize([1.1e-3] * 8, [1e-3] * 8))
    cache = TuneCache(tmp_path / "tune.json")
    result = tuner.tune_model(model, "cpu", 1, {"batch": 2}, cache=cache)
    assert len(calls) == 1 and len(result.problems) == 1 and result.problems[0].layers == ["<MatMul -> a>", "<MatMul -> y>"]
    assert all(c.sparse for c in result.choices.values())
    assert result.whole_model["dense_layers"] == [] and round(result.whole_model["ratio"], 2) == 1.1
    again = tuner.tune_model(model, "cpu", 1, {"batch": 2}, cache=TuneCache.load(tmp_path / "tune.json"))
    assert len(calls) == 1 and again.problems[0].cached
    # With 2 threads, sleeping threads (--no-spinning) are timed apart from spinning ones.
    for spinning, timed in ((False, 2), (False, 2), (True, 3)):
        result = tuner.tune_model(model, "cpu", 2, {"batch": 2}, cache=TuneCache.load(tmp_path / "tune.json"),
                                  spinning=spinning)
        assert len(calls) == timed and result.machine.spinning == spinning


def test_timing_summary_is_the_ratio_of_medians():
    t = summarize([2e-3, 2e-3, 2.2e-3, 9e-3], [1e-3, 1e-3, 1.1e-3, 1e-3])
    assert isinstance(t, Timing) and t.dense_us == pytest.approx(2100) and t.sparse_us == pytest.approx(1000)
    assert t.ratio_low <= t.ratio <= t.ratio_high and t.pairs == 4


# --- the command line ------------------------------------------------------------------------


def cli(*args, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.update(env_extra or {})
    env.pop("ONNXSPARSE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "onnxsparse", *map(str, args)], capture_output=True, text=True, env=env)


def test_tune_needs_the_shapes_and_says_so_in_one_line(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(mlp(), path)
    proc = cli("tune", path, "--cache", tmp_path / "c.json", "--provider", "cpu")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "'batch'" in proc.stderr and "--dim" in proc.stderr
    assert not (tmp_path / "c.json").exists()


def test_tune_list_and_compile_cli_read_the_cache(tmp_path):
    pytest.importorskip("onnxruntime")
    from onnxsparse.hardware import host_key

    try:
        key = host_key("cpu", 1)
    except OnnxSparseError as exc:
        pytest.skip(f"the custom-op library is needed for the machine key: {exc}")
    model = mlp()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    tuned_cache(tmp_path, model, {"<MatMul -> h>": 1.4, "<MatMul -> y>": 0.8}, key=key)
    listed = cli("tune", "--list", "--cache", tmp_path / "tune.json")
    assert listed.returncode == 0 and key.id in listed.stdout
    proc = cli("compile", path, "-o", tmp_path / "out.onnx", "--target", "cpu", "--threads", "1", "--dim", "batch=4",
               "--cache", tmp_path / "tune.json", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    decided = {layer["node"]: layer["decided_by"] for layer in report["layers"]}
    assert decided["<MatMul -> h>"]["source"] == "tuned" and decided["<MatMul -> h>"]["ratio"] == 1.4
    assert not decided["<MatMul -> y>"]["sparse"]
    assert report["target"]["machine"]["id"] == key.id
    text = cli("compile", path, "-o", tmp_path / "out2.onnx", "--target", "cpu", "--threads", "2", "--dim", "batch=4",
               "--cache", tmp_path / "tune.json", "--hardware", "no-such-machine")
    assert text.returncode == 2 and "names no tuned machine" in text.stderr


def test_resolve_target_finds_a_tuned_machine_by_part_of_its_key(tmp_path):
    cache = TuneCache(tmp_path / "tune.json")
    cache.put_layer(KEY, "a", fake(1.2))
    provider, key = resolve_target("cpu", hardware="Test CPU 9000", cache=cache)
    assert provider == "cpu" and key == KEY
    provider, key = resolve_target("cpu", hardware="cpu:AMD EPYC:25/17:avx512", cache=cache)
    assert (key.cpu, key.family, key.model, key.isa) == ("AMD EPYC", 25, 17, "avx512")


def test_whole_model_check_keeps_dense_what_cannot_matter_end_to_end(tmp_path, monkeypatch):
    """Layers that together save under 1% of the model's time stay dense, whatever the (noisy) end-to-end ratio."""
    model = mlp()
    cache = tuned_cache(tmp_path, model, {"<MatMul -> h>": 1.4, "<MatMul -> y>": 1.1})  # 37.7 us saved in all
    monkeypatch.setattr(tuner, "_time_models", lambda *a, **k: summarize([10e-3] * 8, [8e-3] * 8))  # "1.25x"
    policy = MeasuredPolicy("cpu", KEY, cache, {"batch": 4}, use_model_verdict=False, table={})
    verdict = tuner.check_whole_model(model, bind_inputs(model, {"batch": 4}), policy, "cpu", None, 1.0,
                                      lambda *a, **k: None)
    assert verdict["ratio"] == 1.0 and len(verdict["dense_layers"]) == 2 and "under 1.01x" in verdict["note"]


def test_observe_shapes_runs_the_model_for_the_shapes_inference_cannot_give():
    from onnxsparse.tune.problems import LayerProblem, Problem, observe_shapes

    model = make_model(f"""{HEAD} g (float[2,6,8] x) => (float[12,4] y) {{
        h = Reshape(x, s)
        y = MatMul(h, W)
    }}""", s=np.array([-1, 8], np.int64), W=sparse_weight((8, 4), "kn"))
    layer = LayerProblem("<MatMul -> y>", Problem("MatMul", (8, 4), ("rows", 8), "float32"))
    observed = observe_shapes(model, [layer], {"x": random_input((2, 6, 8))}, model)
    assert observed == {"<MatMul -> y>": [12, 8]} and layer.problem.x == (12, 8) and layer.problem.static
