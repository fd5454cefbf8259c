"""CUDA kernels of MatMulCompress, Conv2dCompress and CompressOp (CUDAExecutionProvider).

Each case runs a model holding the custom op on the CUDA EP alone (CPU fallback disabled, so the
CUDA kernel is what runs), and compares with a float64 reference of the dense original, and with the
CPU kernel of the same model where the CPU build has that dtype. fp16/bf16 run through in-graph
Casts from float32 inputs, so the reference sees exactly the rounded values the kernel sees.
Skipped, with the reason, where ONNX Runtime has no CUDA EP or the library has no CUDA kernels.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnxruntime as ort
import pytest

from conftest import REPO, library_available
from onnxsparse import format as fmt

BF16 = onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.BFLOAT16)
DTYPES = {"float": (onnx.TensorProto.FLOAT, np.float32), "float16": (onnx.TensorProto.FLOAT16, np.float16),
          "bfloat16": (onnx.TensorProto.BFLOAT16, BF16)}
# ||out - ref|| / ||ref|| allowed per dtype (fp32 accumulation in every case).
TOLERANCE = {"float": 1e-5, "float16": 2e-3, "bfloat16": 1.2e-2}


def _cuda_reason() -> str | None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu on a GPU machine)"
    if not library_available():
        return "the onnxsparse custom-op library is not built"
    return None


pytestmark = [pytest.mark.cuda, pytest.mark.skipif(_cuda_reason() is not None, reason=_cuda_reason() or "")]


def _session(model: onnx.ModelProto, cuda: bool = True) -> ort.InferenceSession:
    from onnxsparse.session import session_options

    opts = session_options()
    if cuda:
        opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        providers = ["CUDAExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(model.SerializeToString(), opts, providers=providers)


def _round(a: np.ndarray, dtype: str) -> np.ndarray:
    return a.astype(DTYPES[dtype][1]).astype(np.float64)


def _model(op_node: onnx.NodeProto, dtype: str, inputs: dict[str, list], inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    """float32 graph inputs -> Cast(dtype) -> op -> Cast(float) -> Y."""
    elem, _ = DTYPES[dtype]
    nodes, graph_inputs = [], []
    renamed = list(op_node.input)
    for name, shape in inputs.items():
        graph_inputs.append(oh.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))
        if dtype != "float" and not name.startswith("u8_"):
            nodes.append(oh.make_node("Cast", [name], [name + "_c"], to=elem))
            renamed = [name + "_c" if i == name else i for i in renamed]
        if name.startswith("u8_"):
            graph_inputs[-1] = oh.make_tensor_value_info(name, onnx.TensorProto.UINT8, shape)
    del op_node.input[:]
    op_node.input.extend(renamed)
    outs = list(op_node.output)
    if dtype != "float":
        del op_node.output[:]
        op_node.output.extend([o + "_c" for o in outs])
    nodes.append(op_node)
    if dtype != "float":
        nodes += [oh.make_node("Cast", [o + "_c"], [o], to=onnx.TensorProto.FLOAT) for o in outs]
    graph = oh.make_graph(nodes, "g", graph_inputs, [onnx.ValueInfoProto(name=o) for o in outs],
                          initializer=[onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("onnxsparse", 1)])
    model.ir_version = 10
    return model


def _weight(rows: int, k: int, dtype: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2:4 [rows, K] matrix (rounded to dtype) and its (values, index)."""
    rng = np.random.default_rng(seed)
    dense = fmt.prune_magnitude(rng.standard_normal((rows, k)).astype(np.float32))
    dense = dense.astype(DTYPES[dtype][1])
    values, index = fmt.compress(dense)
    return dense.astype(np.float64), values, index


def _rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    assert np.isfinite(out).all(), "non-finite output"
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def _run_matmul(dtype, a_shape, k, n, *, bias=True, alpha=1.0, trans_a=False, const_weight=True, seed=0):
    rows_k, values, index = _weight(n, k, dtype, seed)
    rng = np.random.default_rng(seed + 1)
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32) if bias else None
    inputs = {"A": list(a_shape)}
    inits, feeds = {}, {"A": a}
    names = ["A", "values", "u8_index"]
    if const_weight:
        inits["values"], inits["u8_index"] = values, index
    else:  # fed at run time (the kernel reads SPEC's form directly)
        inputs["values"] = list(values.shape)
        inputs["u8_index"] = list(index.shape)
        feeds["values"], feeds["u8_index"] = values.astype(np.float32), index
    if bias:
        inits["bias"] = b.astype(DTYPES[dtype][1])
        names.append("bias")
    node = oh.make_node("MatMulCompress", names, ["Y"], domain="onnxsparse", alpha=alpha, transA=int(trans_a))
    model = _model(node, dtype, inputs, inits)
    out = _session(model).run(None, feeds)[0]
    a64 = _round(a, dtype)
    x = a64.T if trans_a else a64
    ref = alpha * (x @ rows_k.T)
    if bias:
        ref = ref + _round(b, dtype)
    assert out.shape == ref.shape
    err = _rel_err(out.astype(np.float64), ref)
    assert err < TOLERANCE[dtype], f"{dtype} A{a_shape} K={k} N={n}: rel err {err:.2e}"
    return model, feeds, out


MATMUL_SHAPES = [
    # (A shape, K, N): M < 8, odd M, M not a multiple of 16, large M (cuSPARSELt + remainder rows)
    ((1, 256), 256, 128),
    ((3, 512), 512, 384),
    ((7, 1024), 1024, 1024),
    ((8, 512), 512, 512),
    ((17, 256), 256, 200),
    ((2, 15, 512), 512, 256),
    ((33, 512), 512, 512),
    ((100, 1024), 1024, 512),
    ((512, 1024), 1024, 1024),
    ((1000, 512), 512, 768),
    ((4, 256, 1024), 1024, 4096),
    ((5, 132), 132, 50),  # K/4 odd, K not a multiple of 32, N not a multiple of 16
    ((300, 132), 132, 48),
]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float"])
@pytest.mark.parametrize("a_shape,k,n", MATMUL_SHAPES, ids=[f"{s}-{k}x{n}" for s, k, n in MATMUL_SHAPES])
def test_matmul_compress(dtype, a_shape, k, n):
    _run_matmul(dtype, a_shape, k, n, bias=True)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("m", [1, 16, 64, 2048])
def test_matmul_compress_no_bias_alpha(dtype, m):
    _run_matmul(dtype, (m, 1024), 1024, 1024, bias=False, alpha=0.5)


@pytest.mark.parametrize("dtype", ["float16", "float"])
@pytest.mark.parametrize("m", [5, 256])
def test_matmul_compress_trans_a(dtype, m):
    _run_matmul(dtype, (512, m), 512, 256, trans_a=True)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float"])
@pytest.mark.parametrize("m", [3, 512])
def test_matmul_compress_weight_fed_at_run_time(dtype, m):
    _run_matmul(dtype, (m, 256), 256, 128, const_weight=False)


@pytest.mark.parametrize("dtype", ["float", "float16"])
@pytest.mark.parametrize("m", [3, 64, 1024])
def test_matmul_compress_cuda_matches_cpu(dtype, m):
    model, feeds, out = _run_matmul(dtype, (m, 512), 512, 256)
    cpu = _session(model, cuda=False).run(None, feeds)[0]  # the CPU kernels cover float and float16
    assert _rel_err(out.astype(np.float64), cpu.astype(np.float64)) < 2 * TOLERANCE[dtype]


def test_matmul_compress_bad_index_is_an_error():
    _, values, index = _weight(64, 64, "float16", 3)
    index = index.copy()
    index[0, 0] = 0x0F  # index0 = 3: invalid
    node = oh.make_node("MatMulCompress", ["A", "values", "u8_index"], ["Y"], domain="onnxsparse")
    model = _model(node, "float16", {"A": [4, 64]}, {"values": values, "u8_index": index})
    with pytest.raises(Exception, match="MatMulCompress"):
        _session(model).run(None, {"A": np.ones((4, 64), np.float32)})


def _conv_reference(x, w, b, strides, pads, dilations, group):
    """float64 NCHW conv (pads: top, left, bottom, right)."""
    n, c, h, wd = x.shape
    oc, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh_ = (xp.shape[2] - ((kh - 1) * dilations[0] + 1)) // strides[0] + 1
    ow_ = (xp.shape[3] - ((kw - 1) * dilations[1] + 1)) // strides[1] + 1
    out = np.zeros((n, oc, oh_, ow_))
    ocg = oc // group
    for g in range(group):
        xs = xp[:, g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dilations[0]: i * dilations[0] + strides[0] * (oh_ - 1) + 1: strides[0],
                           j * dilations[1]: j * dilations[1] + strides[1] * (ow_ - 1) + 1: strides[1]]
                out[:, g * ocg:(g + 1) * ocg] += np.einsum("nchw,oc->nohw", patch, w[g * ocg:(g + 1) * ocg, :, i, j])
    if b is not None:
        out += b[None, :, None, None]
    return out


def _same_pads(size, k, s, d, upper):
    out = -(-size // s)
    total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
    begin = total // 2 if upper else total - total // 2
    return begin, total - begin


CONV_CASES = [
    # (x shape, oc, kernel, attributes)
    ((2, 8, 9, 11), 16, (3, 3), dict(pads=[1, 1, 1, 1])),
    ((1, 16, 10, 10), 8, (3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    ((2, 12, 7, 7), 20, (1, 1), dict()),
    ((1, 8, 12, 12), 8, (3, 3), dict(dilations=[2, 2], pads=[2, 2, 2, 2])),
    ((2, 16, 8, 8), 16, (3, 3), dict(group=2, pads=[1, 0, 1, 0])),
    ((1, 8, 9, 10), 8, (1, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    ((1, 8, 9, 10), 8, (3, 2), dict(auto_pad="SAME_LOWER")),
    ((1, 8, 9, 10), 12, (3, 3), dict(auto_pad="VALID", strides=[1, 2])),
    ((8, 64, 32, 32), 64, (3, 3), dict(pads=[1, 1, 1, 1])),  # large M: cuSPARSELt
    ((4, 64, 14, 14), 128, (1, 1), dict(strides=[2, 2])),
]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("x_shape,oc,kernel,attrs", CONV_CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}-{sorted(c[3])}" for c in CONV_CASES])
def test_conv2d_compress(dtype, bias, x_shape, oc, kernel, attrs):
    group = attrs.get("group", 1)
    c = x_shape[1]
    rng = np.random.default_rng(7)
    w = fmt.prune_weight_magnitude(rng.standard_normal((oc, c // group, *kernel)).astype(np.float32), "oihw")
    w = w.astype(DTYPES[dtype][1])
    values, index = fmt.compress_weight(w, "oihw")
    x = rng.standard_normal(x_shape).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32)
    inits = {"values": values, "u8_index": index}
    names = ["X", "values", "u8_index"]
    if bias:
        inits["B"] = b.astype(DTYPES[dtype][1])
        names.append("B")
    node = oh.make_node("Conv2dCompress", names, ["Y"], domain="onnxsparse", kernel_shape=list(kernel), **attrs)
    model = _model(node, dtype, {"X": list(x_shape)}, inits)
    out = _session(model).run(None, {"X": x})[0]
    strides = attrs.get("strides", [1, 1])
    dil = attrs.get("dilations", [1, 1])
    pads = attrs.get("pads", [0, 0, 0, 0])
    ap = attrs.get("auto_pad", "NOTSET")
    if ap in ("SAME_UPPER", "SAME_LOWER"):
        t, bt = _same_pads(x_shape[2], kernel[0], strides[0], dil[0], ap == "SAME_UPPER")
        l, r = _same_pads(x_shape[3], kernel[1], strides[1], dil[1], ap == "SAME_UPPER")
        pads = [t, l, bt, r]
    elif ap == "VALID":
        pads = [0, 0, 0, 0]
    ref = _conv_reference(_round(x, dtype), w.astype(np.float64), _round(b, dtype) if bias else None, strides, pads, dil, group)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    err = _rel_err(out.astype(np.float64), ref)
    assert err < TOLERANCE[dtype], f"rel err {err:.2e}"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float"])
@pytest.mark.parametrize("layout,shape", [("kn", (64, 24)), ("nk", (24, 64)), ("oihw", (8, 12, 3, 3)), ("nk", (5, 12))])
def test_compress_op(dtype, layout, shape):
    rng = np.random.default_rng(11)
    w = fmt.prune_weight_magnitude(rng.standard_normal(shape).astype(np.float32), layout).astype(DTYPES[dtype][1])
    w[tuple(0 for _ in shape)] = 0  # some empty slots
    values_ref, index_ref = fmt.compress_weight(w, layout)
    node = oh.make_node("CompressOp", ["W"], ["values", "index"], domain="onnxsparse", layout=layout)
    model = _model(node, dtype, {"W": list(shape)}, {})
    if dtype != "float":  # index is uint8: no Cast back
        model.graph.node[-1].CopyFrom(oh.make_node("Identity", ["index_c"], ["index"]))
    vals, idx = _session(model).run(None, {"W": w.astype(np.float32)})
    np.testing.assert_array_equal(idx, index_ref)
    np.testing.assert_array_equal(vals, values_ref.astype(np.float32))


def test_compress_op_rejects_dense_weight():
    node = oh.make_node("CompressOp", ["W"], ["values", "index"], domain="onnxsparse", layout="nk")
    model = _model(node, "float", {"W": [4, 8]}, {})
    with pytest.raises(Exception, match="CompressOp"):
        _session(model).run(None, {"W": np.ones((4, 8), np.float32)})


@pytest.mark.parametrize("m", [2, 256])
def test_unfolded_compress_then_matmul(m):
    """CompressOp feeding MatMulCompress in the session (the compiler's no-fold output)."""
    rng = np.random.default_rng(5)
    w = fmt.prune_weight_magnitude(rng.standard_normal((256, 128)).astype(np.float32), "kn").astype(np.float16)
    nodes = [oh.make_node("CompressOp", ["W"], ["v", "i"], domain="onnxsparse", layout="kn"),
             oh.make_node("Cast", ["A"], ["A16"], to=onnx.TensorProto.FLOAT16),
             oh.make_node("MatMulCompress", ["A16", "v", "i"], ["Y16"], domain="onnxsparse"),
             oh.make_node("Cast", ["Y16"], ["Y"], to=onnx.TensorProto.FLOAT)]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("A", onnx.TensorProto.FLOAT, [m, 256])],
                          [oh.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)],
                          initializer=[onnx.numpy_helper.from_array(w, "W")])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("onnxsparse", 1)])
    model.ir_version = 10
    a = rng.standard_normal((m, 256)).astype(np.float32)
    out = _session(model).run(None, {"A": a})[0]
    ref = _round(a, "float16") @ w.astype(np.float64)
    assert _rel_err(out.astype(np.float64), ref) < TOLERANCE["float16"]


def test_cuda_graph_replay_matches():
    """enable_cuda_graph: capture once, replay; the sparse ops are graph-safe."""
    from onnxsparse.session import session_options

    _, values, index = _weight(1024, 1024, "float16", 9)
    for m in (8, 256):
        node = oh.make_node("MatMulCompress", ["A", "values", "index"], ["Y"], domain="onnxsparse")
        graph = oh.make_graph([node], "g", [oh.make_tensor_value_info("A", onnx.TensorProto.FLOAT16, [m, 1024])],
                              [oh.make_tensor_value_info("Y", onnx.TensorProto.FLOAT16, [m, 1024])],
                              initializer=[onnx.numpy_helper.from_array(values, "values"),
                                           onnx.numpy_helper.from_array(index, "index")])
        model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("onnxsparse", 1)])
        model.ir_version = 10
        sess = ort.InferenceSession(model.SerializeToString(), session_options(),
                                    providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])
        a = ort.OrtValue.ortvalue_from_numpy(np.random.default_rng(m).standard_normal((m, 1024)).astype(np.float16), "cuda", 0)
        y = ort.OrtValue.ortvalue_from_shape_and_type([m, 1024], np.float16, "cuda", 0)
        binding = sess.io_binding()
        binding.bind_ortvalue_input("A", a)
        binding.bind_ortvalue_output("Y", y)
        outs = []
        for _ in range(4):
            sess.run_with_iobinding(binding)
            outs.append(y.numpy().copy())
        for o in outs[1:]:
            np.testing.assert_array_equal(o, outs[0])
        ref = a.numpy().astype(np.float64) @ fmt.decompress(values, index).astype(np.float64).T
        assert _rel_err(outs[-1].astype(np.float64), ref) < TOLERANCE["float16"]


def _odd_encodings(values: np.ndarray, index: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same kind of weight with groups SPEC allows but the compressor never writes: the two
    values in descending position order, and both on one element (which then holds their sum)."""
    values, index = values.copy(), index.copy()
    rng = np.random.default_rng(seed)
    rows, groups = values.shape[0], values.shape[1] // 2
    for r in range(rows):
        for g in rng.choice(groups, size=max(1, groups // 4), replace=False):
            shift = 4 * (g % 2)
            nib = (index[r, g // 2] >> shift) & 0xF
            first, second = nib & 3, 1 + ((nib >> 2) & 3)  # positions of values[2g], values[2g+1]
            if rng.integers(2) == 0 and first >= 1 and second <= 2:
                # descending: values[2g] at `second`, values[2g+1] at `first`
                new = second | ((first - 1) << 2)
                values[r, 2 * g], values[r, 2 * g + 1] = values[r, 2 * g + 1], values[r, 2 * g]
            elif second <= 2:
                new = second | ((second - 1) << 2)  # both on element `second`
            else:
                continue
            index[r, g // 2] = (index[r, g // 2] & ~np.uint8(0xF << shift)) | np.uint8(new << shift)
    return values, index


def _odd_encoding_matmul(dtype: str, m: int, k: int, n: int, seed: int):
    """(model, A, reference): a MatMulCompress [m, k] x [k, n] with a bias, its weight's groups in every
    order SPEC allows (_odd_encodings), and the numpy product on the decompressed weight."""
    _, values, index = _weight(n, k, dtype, seed)
    values, index = _odd_encodings(values, index, seed + 1)
    dense = fmt.decompress(values, index).astype(np.float64)
    rng = np.random.default_rng(m)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    node = oh.make_node("MatMulCompress", ["A", "values", "u8_index", "bias"], ["Y"], domain="onnxsparse")
    model = _model(node, dtype, {"A": [m, k]}, {"values": values, "u8_index": index, "bias": b.astype(DTYPES[dtype][1])})
    return model, a, _round(a, dtype) @ dense.T + _round(b, dtype)


@pytest.mark.parametrize("pack", ["1", "0"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("m", [1, 5, 16, 24, 32])
def test_small_m_packed_weight_matches_spec_form(monkeypatch, pack, dtype, m):
    """The own kernel on the weight packed for the sparse tensor cores (K % 128 == 0), and on SPEC's
    form (ONNXSPARSE_CUDA_PACK=0), against numpy on the decompressed weight; N not a multiple of 16
    and groups in every order SPEC allows."""
    monkeypatch.setenv("ONNXSPARSE_CUDA_PACK", pack)
    model, a, ref = _odd_encoding_matmul(dtype, m, 384, 200, 21)
    out = _session(model).run(None, {"A": a})[0].astype(np.float64)
    assert _rel_err(out, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("persistent", [True, False])
@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("m", [1, 16, 24, 40])
def test_own_kernel_blocks_streaming_several_tiles(persistent, pack, m):
    """N = 11208: 701 tiles of 16 weight rows (the last one half), more than an H200 holds blocks
    at once, so with onnxsparse.cuda.persistent each block streams several tiles through its warps'
    rings (M = 40: two rows of M tiles share the resident blocks); with it off, one block per tile.
    Both against numpy."""
    from onnxsparse.session import session_options

    model, a, ref = _odd_encoding_matmul("float16", m, 256, 16 * 700 + 8, 31)
    opts = session_options(cuda_small_m_max=64, cuda_own_timed_m_max=0, cuda_persistent=persistent, cuda_pack=pack)
    opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CUDAExecutionProvider"])
    for _ in range(2):  # the second call reuses what the first built (the packed weight)
        out = session.run(None, {"A": a})[0].astype(np.float64)
        assert _rel_err(out, ref) < TOLERANCE["float16"]
        # every column of every row written: a tile a block skipped would hold the arena's leftovers
        np.testing.assert_allclose(out, ref, rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize("pdl", ["1", "0"])
def test_chained_small_m_layers(monkeypatch, pdl):
    """Sparse layers back to back, each reading the one before (launched as programmatic
    dependents, they must still wait for it), plain and under CUDA-graph replay."""
    from onnxsparse.session import session_options

    monkeypatch.setenv("ONNXSPARSE_CUDA_PDL", pdl)
    m, width, depth = 4, 512, 6
    nodes, inits, dense = [], [], []
    prev = "A"
    for i in range(depth):
        w, values, index = _weight(width, width, "float16", 40 + i)
        dense.append(w)
        inits += [onnx.numpy_helper.from_array(values, f"v{i}"), onnx.numpy_helper.from_array(index, f"i{i}")]
        nodes.append(oh.make_node("MatMulCompress", [prev, f"v{i}", f"i{i}"], [f"y{i}"], domain="onnxsparse",
                                  alpha=0.05))
        prev = f"y{i}"
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("A", onnx.TensorProto.FLOAT16, [m, width])],
                          [oh.make_tensor_value_info(prev, onnx.TensorProto.FLOAT16, [m, width])], initializer=inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("onnxsparse", 1)])
    model.ir_version = 10
    a = np.random.default_rng(3).standard_normal((m, width)).astype(np.float16)
    ref = a.astype(np.float64)
    for w in dense:
        ref = _round((0.05 * ref @ w.T).astype(np.float32), "float16")
    plain = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CUDAExecutionProvider"])
    assert _rel_err(plain.run(None, {"A": a})[0].astype(np.float64), ref) < 4 * TOLERANCE["float16"]
    graphed = ort.InferenceSession(model.SerializeToString(), session_options(),
                                   providers=[("CUDAExecutionProvider", {"enable_cuda_graph": "1"})])
    x = ort.OrtValue.ortvalue_from_numpy(a, "cuda", 0)
    y = ort.OrtValue.ortvalue_from_shape_and_type([m, width], np.float16, "cuda", 0)
    binding = graphed.io_binding()
    binding.bind_ortvalue_input("A", x)
    binding.bind_ortvalue_output(prev, y)
    for _ in range(3):
        graphed.run_with_iobinding(binding)
        assert _rel_err(y.numpy().astype(np.float64), ref) < 4 * TOLERANCE["float16"]


# The cuSPARSELt tuning cache (ONNXSPARSE_CUSPARSELT_CACHE). Each run is a new Python process: the
# file is read once per process, and what it saves is the search a new process would repeat.

CACHE_HEADER = "# onnxsparse cuSPARSELt tuning cache v1"
# One GEMM, M above ONNXSPARSE_CUDA_SMALL_M_MAX: cuSPARSELt's; with ONNXSPARSE_CUDA_OWN_TIMED_M_MAX=0
# it serves all rows, not timed against the own kernel, so both runs compute with the same plan.
CACHE_M, CACHE_K, CACHE_N = 256, 512, 512
_TUNED_LINE = re.compile(rf"cuSPARSELt m={CACHE_M} n={CACHE_N} k={CACHE_K}: ids 0\.\.(-?\d+) tuned")
# The configuration from the cache: said where the first call makes the plan, or, for a plan made
# ahead at kernel creation from the cache (SparseLtWeight::Prepare), by the first call that finds it.
_CACHED_LINE = re.compile(rf"cuSPARSELt m={CACHE_M} n={CACHE_N} k={CACHE_K}: "
                          r"(?:config (\d+) from cache|prepared plan of config (\d+))")
_RUN_IN_NEW_PROCESS = """
import sys
import numpy as np
import onnxruntime as ort
from onnxsparse.session import session_options

opts = session_options()
opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
session = ort.InferenceSession(sys.argv[1], opts, providers=["CUDAExecutionProvider"])
np.save(sys.argv[3], session.run(None, {"A": np.load(sys.argv[2])})[0])
"""


def _cache_model(tmp_path) -> np.ndarray:
    """Writes the fp16 MatMulCompress model and its input under tmp_path; returns the reference."""
    dense, values, index = _weight(CACHE_N, CACHE_K, "float16", 50)
    rng = np.random.default_rng(51)
    a = rng.standard_normal((CACHE_M, CACHE_K)).astype(np.float32)
    b = rng.standard_normal(CACHE_N).astype(np.float32)
    node = oh.make_node("MatMulCompress", ["A", "values", "u8_index", "bias"], ["Y"], domain="onnxsparse")
    model = _model(node, "float16", {"A": [CACHE_M, CACHE_K]},
                   {"values": values, "u8_index": index, "bias": b.astype(np.float16)})
    onnx.save(model, str(tmp_path / "model.onnx"))
    np.save(tmp_path / "a.npy", a)
    return _round(a, "float16") @ dense.T + _round(b, "float16")


def _run_in_new_process(tmp_path, cache, name: str) -> tuple[np.ndarray, str]:
    """Runs the model of _cache_model in a new process with the cache at `cache`: (output, stderr)."""
    env = dict(os.environ, ONNXSPARSE_CUSPARSELT_CACHE=str(cache), ONNXSPARSE_CUDA_TRACE="1",
               ONNXSPARSE_CUSPARSELT_TUNE="1", ONNXSPARSE_CUDA_SMALL_M_MAX="32", ONNXSPARSE_CUDA_OWN_TIMED_M_MAX="0",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    out = tmp_path / f"{name}.npy"
    done = subprocess.run([sys.executable, "-c", _RUN_IN_NEW_PROCESS, str(tmp_path / "model.onnx"),
                           str(tmp_path / "a.npy"), str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(out).astype(np.float64), done.stderr


def _assert_tuned_or_skip(stderr: str) -> None:
    found = _TUNED_LINE.search(stderr)
    assert found, f"no cuSPARSELt tuning line:\n{stderr[-3000:]}"
    if int(found.group(1)) < 0:
        pytest.skip("no cuSPARSELt configuration range is known safe for this GPU and version "
                    "(see ONNXSPARSE_CUSPARSELT_MAX_CONFIG_ID): nothing is tuned, so nothing is cached")


def _cache_entries(cache) -> list[list[str]]:
    lines = cache.read_text().splitlines()
    assert lines and lines[0] == CACHE_HEADER, lines[:2]
    return [line.split("\t") for line in lines[1:] if line and not line.startswith("#")]


def test_cusparselt_tuning_cache_serves_a_new_process(tmp_path):
    """The first process searches and writes the cache (creating its directory); the second takes
    the configuration from it, searches nothing, and computes the same output."""
    ref = _cache_model(tmp_path)
    cache = tmp_path / "cache" / "cusparselt_tuning.txt"
    first, err = _run_in_new_process(tmp_path, cache, "first")
    _assert_tuned_or_skip(err)
    entries = _cache_entries(cache)
    mine = [e for e in entries if len(e) == 12 and e[4:7] == [str(CACHE_M), str(CACHE_N), str(CACHE_K)]]
    assert len(mine) == 1, entries
    second, err = _run_in_new_process(tmp_path, cache, "second")
    cached = _CACHED_LINE.search(err)
    assert cached and not _TUNED_LINE.search(err), err[-3000:]
    assert (cached.group(1) or cached.group(2)) == mine[0][10]
    assert _rel_err(second, first) < 1e-3  # the same configuration (bit-equal unless it splits K with atomics)
    assert _rel_err(first, ref) < TOLERANCE["float16"]


def test_cusparselt_tuning_cache_bad_entries_are_tuned_again(tmp_path):
    """Garbage lines are skipped, and the entry of this very problem with an impossible configuration
    id (9999) is not used: the process searches again, computes correctly and rewrites the file."""
    ref = _cache_model(tmp_path)
    cache = tmp_path / "cache.txt"
    _, err = _run_in_new_process(tmp_path, cache, "first")
    _assert_tuned_or_skip(err)
    [entry] = _cache_entries(cache)
    impossible = entry[:10] + ["9999"] + entry[11:]
    cache.write_text("\n".join([CACHE_HEADER, "garbage", "", "\t".join(["x"] * 12), "\t".join(impossible),
                                "0.8.1\tthree\tfields"]) + "\n")
    out, err = _run_in_new_process(tmp_path, cache, "again")
    assert _TUNED_LINE.search(err) and "from cache" not in err, err[-3000:]
    assert _rel_err(out, ref) < TOLERANCE["float16"]
    [rewritten] = _cache_entries(cache)
    assert rewritten[:10] == entry[:10] and rewritten[10] != "9999"


def test_cusparselt_tuning_cache_write_error_only_warns(tmp_path):
    """A cache that cannot be written (its directory would be under a file): one warning, and the op runs."""
    ref = _cache_model(tmp_path)
    (tmp_path / "a_file").write_text("")
    out, err = _run_in_new_process(tmp_path, tmp_path / "a_file" / "cache.txt", "out")
    _assert_tuned_or_skip(err)
    assert err.count("onnxsparse: cannot write cuSPARSELt tuning cache") == 1, err[-3000:]
    assert _rel_err(out, ref) < TOLERANCE["float16"]


# --------------------------------------------------------------------------------------------
# The activation fused into the sparse ops (compiler pass FuseActivation; on CUDA an elementwise
# pass on the op's stream after the product, cuda/activation_impl.cu).

FUSED_ACTS = ["Relu", "Relu6", "ClipMax", "HardSigmoid", "HardSwish", "MulHardSigmoid", "Sigmoid", "LeakyRelu", "Gelu"]


@pytest.mark.parametrize("dtype", ["float", "float16", "bfloat16"])
@pytest.mark.parametrize("op", ["MatMul", "Gemm", "Conv"])
@pytest.mark.parametrize("act", FUSED_ACTS)
def test_fused_activation(op, act, dtype):
    """Compiled with the activation folded into the op's attributes, on the CUDA EP alone, against
    ONNX Runtime's dense float32 model on the CPU (weights and input rounded through dtype)."""
    from onnxsparse.api import compile_model
    from test_fused_epilogue import ACTS, TOL, as_dtype, layer_model

    conv = dict(c=16, oc=24, h=9, w=11, k=3, attrs=dict(pads=[1, 1, 1, 1]))
    for m in (1, 16, 300):
        model, feeds = layer_model(op, act, dtype, m=m, conv=conv)
        compiled = compile_model(as_dtype(model, dtype)).model
        node = next(n for n in compiled.graph.node if n.domain == "onnxsparse")
        assert oh.get_attribute_value(next(a for a in node.attribute if a.name == "activation")) == ACTS[act][2][0].encode()
        run_feeds = {"x": feeds["x"].astype(np.float16)} if dtype == "float16" else feeds
        out = _session(compiled).run(None, run_feeds)[0].astype(np.float32)
        ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        rtol, atol = TOL[dtype]
        np.testing.assert_allclose(out, ref, rtol=2 * rtol, atol=2 * atol * max(1.0, float(np.abs(ref).max())))
        if op == "Conv":
            break
