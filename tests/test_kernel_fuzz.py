"""Hard inputs for the CPU kernels: hand-built custom-op models with empty and huge shapes, bogus
attributes and wrong index nibbles, plus a seeded random sweep of valid ones.

Every case runs in one child process (``python tests/test_kernel_fuzz.py``, fed the cases as
JSON), so that a case that kills the process (SIGFPE, SIGSEGV, a sanitizer abort) fails the test
and names itself instead of taking pytest down. For each case the child reports what happened; the
test asserts that:

- a valid input gives the result of ONNX Runtime's dense op on the decompressed weight (numpy where
  ONNX Runtime's Conv refuses a zero-size spatial axis, which the op answers with the empty tensor);
- an invalid one gives an ONNX Runtime error whose op status starts with the op's name, and the
  text that says what is wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

I64_MAX = 2**63 - 1
WORKER_TIMEOUT_S = 240
SEED = 20261129

CONV = "onnxsparse.Conv2dCompress"
MATMUL = "onnxsparse.MatMulCompress"
COMPRESS = "onnxsparse.CompressOp"


def conv_case(name, x, oc, kernel, attrs="", *, cpg=None, group=1, const=True, dtype="float", bias=False,
              expect="dense", ref_attrs=None, match=None, index="compressed", shape=None):
    """A Conv2dCompress case: X shape x, OC, kernel [KH, KW], ONNX-text attributes.

    expect: "dense" (ORT's Conv with ref_attrs, default the same attributes), "shape" (an output of
    that shape, all equal to the bias or zero: an empty or all-padding input) or "error" (match).
    """
    cpg = x[1] // group if cpg is None else cpg
    attr_text = f"kernel_shape = [{kernel[0]}, {kernel[1]}]" + (f", {attrs}" if attrs else "")
    ref_text = None
    if expect == "dense":
        ref = attrs if ref_attrs is None else ref_attrs
        ref_text = f"kernel_shape = [{kernel[0]}, {kernel[1]}]" + (f", {ref}" if ref else "")
    return {"id": name, "op": "conv", "x": list(x), "oc": oc, "cpg": cpg, "kernel": list(kernel), "attrs": attr_text,
            "ref_attrs": ref_text, "const": const, "dtype": dtype, "bias": bias, "expect": expect, "match": match,
            "index": index, "shape": shape}


def matmul_case(name, a, n, *, k=None, attrs="", const=True, dtype="float", bias=False, expect="numpy", match=None,
                index="compressed"):
    """A MatMulCompress case: A's shape, N; expect "numpy" (fp64 product) or "error" (match).

    index: "compressed" (a pruned weight's own), "random" (any valid nibbles), "invalid" (one field
    of 3), "values_k_huge" (an empty pair whose K overflows).
    """
    k = (a[0] if "transA = 1" in attrs else a[-1]) if k is None else k
    return {"id": name, "op": "matmul", "a": list(a), "n": n, "k": k, "attrs": attrs, "const": const, "dtype": dtype,
            "bias": bias, "expect": expect, "match": match, "index": index}


def compress_case(name, shape, layout, match):
    return {"id": name, "op": "compress", "w": list(shape), "layout": layout, "expect": "error", "match": match}


def named_cases() -> list[dict]:
    big = 2**62
    cases = [
        # Empty batch and empty output (issue 13, item 1): OC >= 32 so that the fast convolution's
        # feature split is computed from the (zero) number of work items.
        conv_case("conv_n0", (0, 8, 5, 5), 64, (3, 3), "pads = [1, 1, 1, 1]"),
        conv_case("conv_n0_bias_fp16", (0, 8, 5, 5), 64, (3, 3), "pads = [1, 1, 1, 1]", dtype="float16", bias=True),
        conv_case("conv_n0_fed", (0, 8, 5, 5), 64, (3, 3), "pads = [1, 1, 1, 1]", const=False),
        conv_case("conv_n0_grouped", (0, 8, 6, 6), 64, (3, 3), "group = 2", group=2),
        conv_case("conv_h0_same_upper", (1, 8, 0, 6), 64, (3, 3), 'auto_pad = "SAME_UPPER"', expect="shape",
                  shape=[1, 64, 0, 6]),
        conv_case("conv_w0_same_lower", (2, 8, 5, 0), 48, (3, 3), 'auto_pad = "SAME_LOWER", strides = [2, 2]',
                  expect="shape", shape=[2, 48, 3, 0], bias=True),
        conv_case("conv_h0_w0_fed", (3, 8, 0, 0), 40, (1, 1), 'auto_pad = "SAME_UPPER"', const=False, expect="shape",
                  shape=[3, 40, 0, 0]),
        # An empty input padded to a non-empty output: every pixel is padding, Y is the bias.
        conv_case("conv_w0_all_padding", (1, 8, 4, 0), 33, (3, 1), "pads = [1, 1, 1, 1]", bias=True,
                  expect="shape", shape=[1, 33, 4, 2]),
        conv_case("conv_oc0", (1, 8, 5, 5), 0, (3, 3), "", expect="shape", shape=[1, 0, 3, 3]),
        conv_case("conv_n0_huge_empty_x", (0, 8, 2**20, 2**20), 64, (3, 3), "", expect="shape",
                  shape=[0, 64, 2**20 - 2, 2**20 - 2]),
        # Overflowing geometry (item 2): refused with the op's error, never a trap or a wrong shape.
        conv_case("conv_kernel_2p32", (1, 8, 5, 5), 64, (2**32, 2**32), "", cpg=2, expect="error", match="KH\\*KW"),
        conv_case("conv_kernel_2p62", (1, 8, 5, 5), 64, (big, big), "", cpg=2, expect="error", match="kernel"),
        conv_case("conv_kernel_i64max", (1, 8, 5, 5), 64, (I64_MAX, 1), "", cpg=2, expect="error"),
        conv_case("conv_dilation_huge", (1, 8, 7, 7), 64, (3, 3), f"dilations = [{big}, 1]", expect="error",
                  match="dilated kernel"),
        conv_case("conv_dilation_huge_same", (1, 8, 7, 7), 64, (3, 3), f'dilations = [{I64_MAX}, 1], '
                  'auto_pad = "SAME_UPPER"', expect="error", match="dilated kernel"),
        conv_case("conv_pads_overflow", (1, 8, 7, 7), 64, (3, 3), f"pads = [{big}, 0, {big}, 0]", expect="error",
                  match="too large"),
        conv_case("conv_pads_i64max", (1, 8, 7, 7), 64, (3, 3), f"pads = [0, {I64_MAX}, 0, 1]", expect="error",
                  match="too large"),
        conv_case("conv_pads_output_too_large", (1, 8, 7, 7), 64, (3, 3), f"pads = [{2**40}, {2**40}, 0, 0]",
                  expect="error", match="too large"),
        conv_case("conv_group_overflow", (1, 8, 7, 7), 64, (3, 3), f"group = {big}", cpg=4, expect="error",
                  match="C=8"),
        conv_case("conv_group_huge_k0", (1, 0, 7, 7), 0, (3, 3), f"group = {I64_MAX}", cpg=0, expect="shape",
                  shape=[1, 0, 5, 5]),
        conv_case("conv_x_too_large", (0, 8, 2**31, 2**31), 64, (3, 3), "", expect="error", match="X of shape"),
        conv_case("conv_values_k_huge", (1, 8, 7, 7), 0, (3, 3), "", expect="error", match="too large",
                  index="values_k_huge"),
        # Huge strides with SAME padding: one output row, as with a stride of H. (H is at most the
        # kernel here: with a stride past the kernel, ONNX Runtime's Conv pads SAME negatively where
        # ONNX's shape rule and this op pad zero.)
        conv_case("conv_stride_i64max_same_upper", (1, 8, 2, 6), 64, (3, 3), f'strides = [{I64_MAX}, 1], '
                  'auto_pad = "SAME_UPPER"', ref_attrs='strides = [2, 1], auto_pad = "SAME_UPPER"'),
        conv_case("conv_stride_i64max_same_lower", (2, 8, 3, 2), 40, (3, 2), f'strides = [{I64_MAX}, {I64_MAX}], '
                  'auto_pad = "SAME_LOWER"', ref_attrs='strides = [3, 2], auto_pad = "SAME_LOWER"', bias=True),
        conv_case("conv_stride_i64max_notset", (1, 8, 7, 6), 64, (3, 3), f"strides = [{I64_MAX}, 1], "
                  "pads = [1, 1, 1, 1]", ref_attrs="strides = [9, 1], pads = [1, 1, 1, 1]"),
        conv_case("conv_stride_i64max_fed", (1, 8, 7, 6), 64, (3, 3), f"strides = [{I64_MAX}, {I64_MAX}]",
                  ref_attrs="strides = [7, 6]", const=False),
        conv_case("conv_dilation_huge_kernel1", (1, 8, 7, 6), 64, (1, 3), f"dilations = [{big}, 1]",
                  ref_attrs=""),
        # Bogus attributes.
        conv_case("conv_kernel_zero", (1, 8, 5, 5), 64, (0, 3), "", cpg=2, expect="error", match="kernel_shape"),
        conv_case("conv_kernel_negative", (1, 8, 5, 5), 64, (-1, 3), "", cpg=2, expect="error", match="kernel_shape"),
        conv_case("conv_kernel_floats", (1, 8, 5, 5), 64, ("3.0", "3.0"), "", cpg=8, expect="error",
                  match="kernel_shape"),
        conv_case("conv_strides_negative", (1, 8, 5, 5), 64, (3, 3), "strides = [-1, 1]", expect="error",
                  match="strides"),
        conv_case("conv_strides_three", (1, 8, 5, 5), 64, (3, 3), "strides = [1, 1, 1]", expect="error",
                  match="strides"),
        conv_case("conv_dilations_zero", (1, 8, 5, 5), 64, (3, 3), "dilations = [0, 1]", expect="error",
                  match="dilations"),
        conv_case("conv_pads_three", (1, 8, 5, 5), 64, (3, 3), "pads = [1, 1, 1]", expect="error", match="pads"),
        conv_case("conv_pads_negative", (1, 8, 5, 5), 64, (3, 3), "pads = [-1, 0, 0, 0]", expect="error",
                  match="pads"),
        conv_case("conv_group_zero", (1, 8, 5, 5), 64, (3, 3), "group = 0", expect="error", match="group"),
        conv_case("conv_group_negative", (1, 8, 5, 5), 64, (3, 3), "group = -2", expect="error", match="group"),
        conv_case("conv_auto_pad_bogus", (1, 8, 5, 5), 64, (3, 3), 'auto_pad = "BOGUS"', expect="error",
                  match="auto_pad"),
        conv_case("conv_group_as_string", (1, 8, 5, 5), 64, (3, 3), 'group = "two"', expect="error", match="group"),
        # Wrong index nibbles.
        conv_case("conv_index_invalid_const", (1, 8, 5, 5), 64, (3, 3), "", expect="error", match="invalid 2-bit",
                  index="invalid"),
        conv_case("conv_index_invalid_fed", (1, 8, 5, 5), 64, (3, 3), "", const=False, expect="error",
                  match="invalid 2-bit", index="invalid"),
        conv_case("conv_index_random_valid", (2, 8, 6, 5), 36, (3, 3), "pads = [1, 1, 1, 1]", index="random"),
        conv_case("conv_index_random_valid_fed", (1, 16, 6, 5), 20, (3, 3), "pads = [1, 1, 1, 1]", const=False,
                  index="random"),
        # MatMulCompress: empty and huge shapes, bogus attributes, wrong nibbles.
        matmul_case("matmul_m0", (0, 16), 40),
        matmul_case("matmul_m0_rank3", (3, 0, 16), 40, bias=True),
        matmul_case("matmul_m0_fp16_fed", (0, 16), 40, dtype="float16", const=False),
        matmul_case("matmul_n0", (5, 16), 0),
        matmul_case("matmul_k0", (5, 0), 7, bias=True),
        matmul_case("matmul_trans_m0", (16, 0), 33, attrs="transA = 1"),
        matmul_case("matmul_a_too_large", (0, 2**32, 2**32, 16), 8, expect="error", match="A of shape"),
        matmul_case("matmul_y_too_large", (2**40, 2**20, 0), 2**20, k=0, expect="error", match="too large"),
        matmul_case("matmul_values_k_huge", (0, 8), 0, expect="error", match="too large", index="values_k_huge"),
        matmul_case("matmul_trans_a_bogus", (4, 16), 8, attrs="transA = 2", expect="error", match="transA"),
        matmul_case("matmul_alpha_string", (4, 16), 8, attrs='alpha = "x"', expect="error", match="alpha"),
        matmul_case("matmul_index_invalid_const", (4, 16), 40, expect="error", match="invalid 2-bit",
                    index="invalid"),
        matmul_case("matmul_index_invalid_fed", (33, 24), 9, const=False, expect="error", match="invalid 2-bit",
                    index="invalid"),
        matmul_case("matmul_index_random_valid", (37, 24), 40, index="random", bias=True),
        matmul_case("matmul_index_random_valid_fed", (5, 24), 17, const=False, index="random"),
        # CompressOp: sizes that overflow K.
        compress_case("compress_oihw_k_overflow", (0, 2**21, 2**21, 2**21), "oihw", "too large"),
        compress_case("compress_oihw_k_huge", (0, 2**30, 2**30, 4), "oihw", "too large"),
        compress_case("compress_kn_k_huge", (2**62, 0), "kn", "too large"),
        compress_case("compress_nk_k_i64max", (0, I64_MAX), "nk", "too large"),
        compress_case("compress_bogus_layout", (4, 8), "ohwi", "layout"),
    ]
    return cases


def random_cases(seed: int, count: int) -> list[dict]:
    """Valid (mostly) products of random small geometry, including zero sizes."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        const = bool(rng.integers(2))
        dtype = "float16" if rng.random() < 0.3 else "float"
        bias = bool(rng.integers(2))
        index = "random" if rng.random() < 0.3 else "compressed"
        if i % 2 == 0:
            group = int(rng.choice([1, 1, 2]))
            cpg = int(rng.choice([4, 8]))
            oc = group * int(rng.choice([0, 1, 5, 16, 33]) if rng.random() < 0.1 else rng.choice([1, 5, 16, 33]))
            n = int(rng.choice([0, 1, 1, 2]))
            h, w = (int(v) for v in rng.integers(1, 10, size=2))
            kernel = tuple(int(v) for v in rng.integers(1, 4, size=2))
            strides = [int(v) for v in rng.integers(1, 4, size=2)]
            dil = [int(v) for v in rng.integers(1, 3, size=2)]
            auto = str(rng.choice(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
            attrs = f"strides = {strides}, dilations = {dil}, group = {group}"
            ok = True
            if auto == "NOTSET":
                pads = [int(v) for v in rng.integers(0, 3, size=4)]
                attrs += f", pads = {pads}"
                for axis, size in ((0, h), (1, w)):
                    ok &= size + pads[axis] + pads[axis + 2] >= dil[axis] * (kernel[axis] - 1) + 1
            else:
                attrs += f', auto_pad = "{auto}"'
                if auto == "VALID":
                    ok = h >= dil[0] * (kernel[0] - 1) + 1 and w >= dil[1] * (kernel[1] - 1) + 1
            if auto.startswith("SAME") and (dil != [1, 1]):
                dil_free = attrs.replace(f"dilations = {dil}", "dilations = [1, 1]")  # ORT's Conv refuses SAME + dilation
                attrs = dil_free
            cases.append(conv_case(f"random_conv_{i}", (n, group * cpg, h, w), oc, kernel, attrs, group=group,
                                   const=const, dtype=dtype, bias=bias, index=index,
                                   expect="dense" if ok else "error", match=None if ok else "negative"))
        else:
            k = int(rng.choice([4, 8, 12, 20, 36, 68]))
            nn = int(rng.choice([1, 7, 17, 33, 70]))
            trans = rng.random() < 0.2
            if trans:
                a = (k, int(rng.integers(0, 70)))
                attrs = "transA = 1"
            else:
                rank = int(rng.integers(1, 4))
                lead = [int(v) for v in rng.integers(0, 6, size=rank - 1)] if rng.random() < 0.5 else \
                    [int(v) for v in rng.integers(1, 80, size=rank - 1)]
                a = (*lead, k)
                attrs = ""
            if rng.random() < 0.5:
                attrs = ", ".join(filter(None, [attrs, f"alpha = {float(rng.choice([0.5, 1.0, -2.0]))}"]))
            cases.append(matmul_case(f"random_matmul_{i}", a, nn, attrs=attrs, const=const, dtype=dtype, bias=bias,
                                     index=index))
    return cases


def run_worker(cases: list[dict]) -> tuple[int, list[dict], str]:
    """Runs the cases in one child; its exit code, its result lines and the end of its stderr."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve())], input=json.dumps(cases),
                          capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, results, proc.stderr[-3000:]


def run_cases(cases: list[dict]) -> dict[str, dict]:
    """Every case's result; a case that kills the child is recorded as such and the rest run on."""
    outcome: dict[str, dict] = {}
    remaining = list(cases)
    while remaining:
        returncode, results, stderr = run_worker(remaining)
        started = [r["id"] for r in results if r.get("started")]
        outcome.update({r["id"]: r for r in results if not r.get("started")})
        if returncode == 0:
            break
        dead = started[-1] if started and started[-1] not in outcome else None
        if dead is None:  # died outside a case: report it on every case without a result
            for case in remaining:
                outcome.setdefault(case["id"], {"status": f"worker died with exit code {returncode}",
                                                "message": stderr})
            break
        outcome[dead] = {"status": f"killed the process (exit code {returncode})", "message": stderr}
        remaining = remaining[[c["id"] for c in remaining].index(dead) + 1:]
    return outcome


def assert_all_pass(cases: list[dict]) -> None:
    outcome = run_cases(cases)
    failures = [f"{c['id']}: {outcome.get(c['id'], {}).get('status', 'no result')}: "
                f"{outcome.get(c['id'], {}).get('message', '')[-400:]}"
                for c in cases if outcome.get(c["id"], {}).get("status") != "pass"]
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)


@pytest.mark.kernels
def test_named_hard_inputs():
    """Empty batches and outputs, overflowing geometry, bogus attributes, invalid index nibbles."""
    assert_all_pass(named_cases())


@pytest.mark.kernels
def test_seeded_random_products():
    assert_all_pass(random_cases(SEED, 60))


@pytest.mark.kernels
def test_worker_reports_a_crash():
    """The harness itself: a child killed by a signal fails that case, and the cases after it still run."""
    cases = [{"id": "die", "op": "die"}, matmul_case("after_die", (3, 8), 5)]
    outcome = run_cases(cases)
    assert outcome["die"]["status"].startswith("killed the process")
    assert outcome["after_die"]["status"] == "pass", outcome["after_die"]
    with pytest.raises(AssertionError, match="die: killed the process"):
        assert_all_pass(cases[:1])


# --------------------------------------------------------------------------------------------
# The child process: builds and runs each case, one JSON line per case on stdout.


def _worker() -> None:
    import re
    import signal

    import onnx
    import onnx.helper
    import onnx.numpy_helper
    import onnx.parser
    import onnxruntime as ort

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import onnxsparse
    from onnxsparse import format as fmt

    np_dtypes = {"float": np.float32, "float16": np.float16}
    onnx_types = {np.dtype(np.float32): "float", np.dtype(np.float16): "float16", np.dtype(np.uint8): "uint8"}

    def array(shape, dtype, rng):
        """Random data, or a zero-size tensor with dimensions numpy cannot hold (then a TensorProto)."""
        if any(d == 0 for d in shape):
            try:
                return np.zeros(shape, dtype)
            except ValueError:
                tensor = onnx.TensorProto()
                tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
                tensor.dims.extend(shape)
                return tensor
        return rng.standard_normal(shape).astype(dtype)

    def build(body, feeds, consts, outputs):
        """A model from one node in ONNX text; feeds become graph inputs, consts initializers."""
        ins = ", ".join(f"{onnx_types[a.dtype]}[{', '.join(map(str, a.shape))}] {n}" for n, a in feeds.items())
        outs = ", ".join(f"{t} {n}" for n, t in outputs.items())
        model = onnx.parser.parse_model(f'<ir_version: 10, opset_import: ["" : 17, "onnxsparse" : 1]>\n'
                                        f"g ({ins}) => ({outs}) {{ {body} }}")
        for out in model.graph.output:
            out.type.tensor_type.ClearField("shape")
        for name, value in consts.items():
            if isinstance(value, onnx.TensorProto):
                value.name = name
                model.graph.initializer.append(value)
            else:
                model.graph.initializer.append(onnx.numpy_helper.from_array(value, name))
        return model

    def options():
        so = ort.SessionOptions()
        so.log_severity_level = 4
        so.intra_op_num_threads = 2
        return so

    def run_sparse(model, feeds):
        session = onnxsparse.InferenceSession(model, sess_options=options(), providers=["CPUExecutionProvider"])
        return session.run(None, feeds)

    def run_dense(model, feeds):
        return ort.InferenceSession(model.SerializeToString(), options(), providers=["CPUExecutionProvider"]).run(
            None, feeds)

    def pair(rng, rows, k, dtype, kind):
        """(values, index) of a [rows, K] weight, and the dense [rows, K] fp64 matrix they decode to."""
        if kind == "values_k_huge":
            return array((0, 2**61), dtype, rng), array((0, 2**58), np.uint8, rng), None
        if kind == "random":  # any valid nibbles, including both slots on one element (they add)
            values = rng.standard_normal((rows, k // 2)).astype(dtype)
            fields = rng.integers(0, 3, size=(rows, 2 * ((k + 7) // 8), 2))
            nibbles = (fields[..., 0] | (fields[..., 1] << 2)).astype(np.uint8)
            if (k // 4) % 2:
                nibbles[:, -1] = 0
            index = (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).astype(np.uint8)
            return values, index, fmt.decompress(values.astype(np.float64), index)
        dense = fmt.prune_magnitude(rng.standard_normal((rows, k)).astype(np.float32)).astype(dtype)
        values, index = fmt.compress(dense)
        if kind == "invalid" and index.size:
            flat = index.reshape(-1)
            flat[rng.integers(flat.size)] |= 0x03 if rng.integers(2) else 0x30
        return values, index, dense.astype(np.float64)

    def compare(y, expected, k, dtype):
        if y.shape != expected.shape:
            return f"shape {list(y.shape)}, expected {list(expected.shape)}"
        scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
        tol = ((1e-2 if dtype == "float16" else 1e-5) * max(k, 1) ** 0.5 + 1e-6 * max(k, 1)) * scale
        err = float(np.abs(y.astype(np.float64) - expected).max(initial=0.0))
        return None if err <= tol else f"max error {err} > {tol}"

    def place(value, name, feeds, consts, const):
        (consts if const or not isinstance(value, np.ndarray) else feeds)[name] = value

    def conv(case, rng):
        dtype = np_dtypes[case["dtype"]]
        n, c, h, w = case["x"]
        oc, cpg = case["oc"], case["cpg"]
        kh, kw = case["kernel"]
        numeric = isinstance(kh, int) and isinstance(kw, int) and 0 < kh * kw < 10**6
        k = cpg * kh * kw if numeric else 2 * cpg
        values, index, dense = pair(rng, oc, k, dtype, case["index"])
        x = array((n, c, h, w), dtype, rng)
        b = rng.standard_normal(oc).astype(dtype)
        names = "X, values, index" + (", B" if case["bias"] else "")
        feeds, consts = {}, {}
        place(x, "X", feeds, consts, False)
        place(values, "values", feeds, consts, case["const"])
        place(index, "index", feeds, consts, case["const"])
        if case["bias"]:
            consts["B"] = b
        model = build(f"Y = {CONV} <{case['attrs']}> ({names})", feeds, consts, {"Y": case["dtype"]})
        (y,) = run_sparse(model, feeds)
        if case["expect"] == "shape":
            if list(y.shape) != case["shape"]:
                return f"shape {list(y.shape)}, expected {case['shape']}"
            fill = b.astype(np.float64)[None, :, None, None] if case["bias"] else np.zeros(1)
            return compare(y, np.broadcast_to(fill, y.shape), k, case["dtype"])
        ref_consts = {"W": fmt.from_rows_k(dense, "oihw", (oc, cpg, kh, kw)).astype(np.float32)}
        if case["bias"]:
            ref_consts["B"] = b.astype(np.float32)
        x32 = x.astype(np.float32)
        ref = build(f"Y = Conv <{case['ref_attrs']}> (X, W{', B' if case['bias'] else ''})", {"X": x32}, ref_consts,
                    {"Y": "float"})
        (expected,) = run_dense(ref, {"X": x32})
        return compare(y, expected.astype(np.float64), k, case["dtype"])

    def matmul(case, rng):
        dtype = np_dtypes[case["dtype"]]
        a_shape, n, k = tuple(case["a"]), case["n"], case["k"]
        values, index, dense = pair(rng, n, k, dtype, case["index"])
        a = array(a_shape, dtype, rng)
        bias = rng.standard_normal(n).astype(dtype)
        names = "A, values, index" + (", bias" if case["bias"] else "")
        feeds, consts = {}, {}
        place(a, "A", feeds, consts, False)
        place(values, "values", feeds, consts, case["const"])
        place(index, "index", feeds, consts, case["const"])
        if case["bias"]:
            consts["bias"] = bias
        attrs = f"<{case['attrs']}>" if case["attrs"] else ""
        model = build(f"Y = {MATMUL} {attrs} ({names})", feeds, consts, {"Y": case["dtype"]})
        (y,) = run_sparse(model, feeds)
        found = re.search(r"alpha = ([-0-9.]+)", case["attrs"])
        alpha = float(found.group(1)) if found else 1.0
        a64 = a.astype(np.float64)
        if "transA = 1" in case["attrs"]:
            a64 = a64.T
        expected = alpha * (a64 @ dense.T)
        if case["bias"]:
            expected = expected + bias.astype(np.float64)
        return compare(y, expected, k, case["dtype"])

    def compress(case, rng):
        w = array(tuple(case["w"]), np.float32, rng)
        feeds, consts = {}, {}
        place(w, "W", feeds, consts, False)
        model = build(f'values, index = {COMPRESS} <layout = "{case["layout"]}"> (W)', feeds, consts,
                      {"values": "float", "index": "uint8"})
        run_sparse(model, feeds)
        return "ran without an error"

    ops = {"conv": ("Conv2dCompress", conv), "matmul": ("MatMulCompress", matmul), "compress": ("CompressOp", compress)}
    for case in json.loads(sys.stdin.read()):
        print(json.dumps({"id": case["id"], "started": True}), flush=True)
        if case["op"] == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        rng = np.random.default_rng(sum(map(ord, case["id"])))
        op, fn = ops[case["op"]]
        try:
            problem = fn(case, rng)
            if case["expect"] == "error":
                result = {"status": "no error", "message": problem or ""}
            else:
                result = {"status": "pass" if problem is None else "mismatch", "message": problem or ""}
        except Exception as e:  # noqa: BLE001 - an ONNX Runtime error is this case's outcome
            message = str(e)
            status = message.split("Status Message:", 1)[-1].strip()
            if case["expect"] != "error":
                result = {"status": "unexpected error", "message": message}
            elif not status.startswith(f"{op}: "):
                result = {"status": "error not from the op", "message": message}
            elif case.get("match") and not re.search(case["match"], status):
                result = {"status": "error without its reason", "message": message}
            else:
                result = {"status": "pass", "message": message}
        print(json.dumps({"id": case["id"], **result}), flush=True)


if __name__ == "__main__":
    _worker()
