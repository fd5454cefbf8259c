"""Conv2dCompress's per-image (NCHW) CUDA form: Y[b] = W . im2col(X[b]) as one strided-batched
cuSPARSELt product, the output landing in NCHW with no transpose (custom_ops/cuda/conv2d_compress.h).

ONNXSPARSE_CUDA_CONV_FORM (read at kernel creation) forces a form: `nchw` takes the per-image form
wherever it applies (fp16/bf16, group 1, constant weight, cuSPARSELt loads), `nchw_padded` the same
with each image's OH*OW padded to 8, `nhwc` the transposing one, `auto` (default) times them at a
shape's first call. Each case compares with a float64 reference of the dense Conv (and the fused
activation), checks from the op's log line which form ran, and covers ResNet-50's conv kinds at
small sizes: 1x1 with OH*OW a multiple of 8 (X is the GEMM operand itself), 1x1 with OH*OW not
(unpadded rows, or padded to 8 and dropped in the epilogue), 3x3 pad 1, 1x1 and 3x3 stride 2, and a
7x7 stride-2 stem; NaN/Inf like the dense op; CUDA-graph capture and replay.
Skipped, with the reason, where ONNX Runtime has no CUDA EP or the library has no CUDA kernels.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper
import onnxruntime as ort
import pytest

from conftest import cuda_reason
from onnxsparse import format as fmt

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(cuda_reason() is not None, reason=cuda_reason() or "")]

BF16 = onnx.helper.tensor_dtype_to_np_dtype(onnx.TensorProto.BFLOAT16)
ELEM = {"float16": onnx.TensorProto.FLOAT16, "bfloat16": onnx.TensorProto.BFLOAT16, "float": onnx.TensorProto.FLOAT}
NP = {"float16": np.float16, "bfloat16": BF16, "float": np.float32}
TOLERANCE = {"float16": 2e-3, "bfloat16": 1.2e-2, "float": 1e-5}

# (x shape, out channels, kernel, attributes)
CASES = [
    ((4, 32, 8, 8), 64, (1, 1), {}),                                       # 1x1, OH*OW = 64: X itself
    ((4, 64, 7, 7), 32, (1, 1), {}),                                       # 1x1, 49 -> 56 padded
    ((3, 32, 7, 7), 32, (3, 3), {"pads": [1, 1, 1, 1]}),                   # 3x3, stage 4 of ResNet-50
    ((2, 32, 14, 14), 48, (3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),  # 3x3 stride 2
    ((2, 64, 14, 14), 64, (1, 1), {"strides": [2, 2]}),                    # downsample 1x1 stride 2
    ((2, 16, 23, 23), 16, (7, 7), {"pads": [3, 3, 3, 3], "strides": [2, 2]}),  # stem-like (K = 784)
    ((32, 64, 8, 8), 64, (3, 3), {"pads": [1, 1, 1, 1]}),                  # batch 32
]
CASE_IDS = [f"n{c[0][0]}c{c[0][1]}h{c[0][2]}w{c[0][3]}-oc{c[1]}-{c[2][0]}x{c[2][1]}-{'s2' if c[3].get('strides') else 's1'}"
            for c in CASES]
ACTIVATIONS = {"": None, "Relu": [], "Clip": [0.0, 0.5]}


def _activate(y: np.ndarray, act: str, params) -> np.ndarray:
    if act == "Relu":
        return np.where(y < 0, 0.0, y)  # NaN stays NaN, as the kernels' Activate
    if act == "Clip":
        return np.where(y < params[0], params[0], np.where(y > params[1], params[1], y))
    return y


def _reference(x, w, b, strides, pads):
    """float64 NCHW conv, group 1, dilation 1 (pads: top, left, bottom, right); 0 * Inf = NaN as dense."""
    n, c, h, wd = x.shape
    oc, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh_ = (xp.shape[2] - kh) // strides[0] + 1
    ow_ = (xp.shape[3] - kw) // strides[1] + 1
    out = np.zeros((n, oc, oh_, ow_))
    with np.errstate(invalid="ignore", over="ignore"):
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, :, i: i + strides[0] * (oh_ - 1) + 1: strides[0], j: j + strides[1] * (ow_ - 1) + 1: strides[1]]
                out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
        if b is not None:
            out += b[None, :, None, None]
    return out


def _conv_model(x_shape, oc, kernel, attrs, dtype, bias, act, seed=3):
    rng = np.random.default_rng(seed)
    c = x_shape[1]
    w = fmt.prune_weight_magnitude(rng.standard_normal((oc, c, *kernel)).astype(np.float32), "oihw").astype(NP[dtype])
    values, index = fmt.compress_weight(w, "oihw")
    b = rng.standard_normal(oc).astype(NP[dtype])
    inits = [onnx.numpy_helper.from_array(values, "values"), onnx.numpy_helper.from_array(index, "index")]
    names = ["Xc", "values", "index"]
    if bias:
        inits.append(onnx.numpy_helper.from_array(b, "B"))
        names.append("B")
    extra = {}
    if act:
        extra["activation"] = act
        if ACTIVATIONS[act]:
            extra["activation_params"] = ACTIVATIONS[act]
    nodes = [oh.make_node("Cast", ["X"], ["Xc"], to=ELEM[dtype]),
             oh.make_node("Conv2dCompress", names, ["Yc"], domain="onnxsparse", kernel_shape=list(kernel), **attrs, **extra),
             oh.make_node("Cast", ["Yc"], ["Y"], to=onnx.TensorProto.FLOAT)]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("X", onnx.TensorProto.FLOAT, list(x_shape))],
                          [oh.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)], initializer=inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("onnxsparse", 1)])
    model.ir_version = 10
    return model, w.astype(np.float64), b.astype(np.float64) if bias else None


def _session(model, monkeypatch, form: str, **providers):
    from onnxsparse.session import session_options

    monkeypatch.setenv("ONNXSPARSE_CUDA_CONV_FORM", form)
    opts = session_options(log_verbose=True, cusparselt_cache="off")
    opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=[("CUDAExecutionProvider", providers)] if providers else ["CUDAExecutionProvider"])


def _form_ran(log: str) -> str:
    """The form the op's choice line reports (the last one), '' when none was logged."""
    found = re.findall(r"Conv2dCompress N=\d+ .*-> (per-image|NHWC)", log)
    return found[-1] if found else ""


def _check(out, ref, dtype):
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert np.isfinite(out).all(), "non-finite output"
    err = float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))
    assert err < TOLERANCE[dtype], f"rel err {err:.2e}"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("bias,act", [(True, ""), (False, ""), (True, "Relu"), (False, "Relu"), (True, "Clip")])
@pytest.mark.parametrize("x_shape,oc,kernel,attrs", CASES, ids=CASE_IDS)
def test_per_image_form_matches_dense(monkeypatch, capfd, dtype, bias, act, x_shape, oc, kernel, attrs):
    model, w, b = _conv_model(x_shape, oc, kernel, attrs, dtype, bias, act)
    x = np.random.default_rng(11).standard_normal(x_shape).astype(np.float32)
    out = _session(model, monkeypatch, "nchw").run(None, {"X": x})[0]
    log = capfd.readouterr().err
    assert _form_ran(log) == "per-image", f"the per-image form did not run; log: {log[-2000:]}"
    ref = _reference(x.astype(NP[dtype]).astype(np.float64), w, b, attrs.get("strides", [1, 1]),
                     attrs.get("pads", [0, 0, 0, 0]))
    _check(out.astype(np.float64), _activate(ref, act, ACTIVATIONS[act]), dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("x_shape,oc,kernel,attrs", CASES[1:4], ids=CASE_IDS[1:4])
def test_padded_per_image_form_matches_dense(monkeypatch, capfd, dtype, x_shape, oc, kernel, attrs):
    """OH*OW not a multiple of 8 (49, 196): nchw_padded pads each image's columns to 8 and drops the
    padding in the epilogue pass, whether or not cuSPARSELt takes the unpadded rows."""
    model, w, b = _conv_model(x_shape, oc, kernel, attrs, dtype, True, "Relu")
    x = np.random.default_rng(15).standard_normal(x_shape).astype(np.float32)
    out = _session(model, monkeypatch, "nchw_padded").run(None, {"X": x})[0]
    log = capfd.readouterr().err
    assert _form_ran(log) == "per-image", f"the per-image form did not run; log: {log[-2000:]}"
    hw = out.shape[2] * out.shape[3]
    assert f"-> per-image cols={-(-hw // 8) * 8}" in log
    ref = _reference(x.astype(NP[dtype]).astype(np.float64), w, b, attrs.get("strides", [1, 1]),
                     attrs.get("pads", [0, 0, 0, 0]))
    _check(out.astype(np.float64), _activate(ref, "Relu", []), dtype)


@pytest.mark.parametrize("form", ["auto", "nhwc"])
@pytest.mark.parametrize("x_shape,oc,kernel,attrs", [CASES[1], CASES[3], CASES[6]], ids=[CASE_IDS[1], CASE_IDS[3], CASE_IDS[6]])
def test_other_forms_match_dense(monkeypatch, capfd, form, x_shape, oc, kernel, attrs):
    model, w, b = _conv_model(x_shape, oc, kernel, attrs, "float16", True, "Relu")
    x = np.random.default_rng(12).standard_normal(x_shape).astype(np.float32)
    sess = _session(model, monkeypatch, form)
    outs = [sess.run(None, {"X": x})[0] for _ in range(3)]  # the first call chooses; later ones run the choice
    log = capfd.readouterr().err
    if form == "nhwc":
        assert _form_ran(log) == "", "a forced NHWC op logged a per-image choice"
    else:
        assert _form_ran(log) in ("per-image", "NHWC")
    ref = _activate(_reference(x.astype(np.float16).astype(np.float64), w, b, attrs.get("strides", [1, 1]),
                               attrs.get("pads", [0, 0, 0, 0])), "Relu", [])
    for out in outs:
        _check(out.astype(np.float64), ref, "float16")


@pytest.mark.parametrize("act", ["", "Relu"])
@pytest.mark.parametrize("x_shape,oc,kernel,attrs", [CASES[0], CASES[1], CASES[2]], ids=CASE_IDS[:3])
def test_per_image_form_nonfinite_like_dense(monkeypatch, capfd, act, x_shape, oc, kernel, attrs):
    model, w, b = _conv_model(x_shape, oc, kernel, attrs, "float16", True, act)
    rng = np.random.default_rng(13)
    x = rng.standard_normal(x_shape).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    x[x_shape[0] - 1, 5, 4, 4] = np.inf
    x[x_shape[0] - 1, 6, 0, 0] = -np.inf
    out = _session(model, monkeypatch, "nchw").run(None, {"X": x})[0].astype(np.float64)
    assert _form_ran(capfd.readouterr().err) == "per-image"
    ref = _activate(_reference(x.astype(np.float16).astype(np.float64), w, b, attrs.get("strides", [1, 1]),
                               attrs.get("pads", [0, 0, 0, 0])), act, [])
    assert out.shape == ref.shape
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_array_equal(np.isposinf(out), np.isposinf(ref))
    np.testing.assert_array_equal(np.isneginf(out), np.isneginf(ref))
    finite = np.isfinite(ref)
    assert finite.any() and not finite.all()
    err = float(np.linalg.norm(out[finite] - ref[finite]) / np.linalg.norm(ref[finite]))
    assert err < TOLERANCE["float16"], f"rel err {err:.2e}"


@pytest.mark.parametrize("x_shape,oc,kernel,attrs", [CASES[1], CASES[6]], ids=[CASE_IDS[1], CASE_IDS[6]])
def test_per_image_form_under_cuda_graph(monkeypatch, capfd, x_shape, oc, kernel, attrs):
    """enable_cuda_graph: ORT runs once uncaptured (the first call chooses and plans), captures the
    second, replays after; every replay equals the first output and the dense reference."""
    model, w, b = _conv_model(x_shape, oc, kernel, attrs, "float16", True, "Relu")
    # fp16 in and out, so that the graph holds only CUDA nodes
    graph = model.graph
    del graph.node[0]
    del graph.node[-1]
    graph.node[0].input[0] = "X"
    graph.node[0].output[0] = "Y"
    graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    sess = _session(model, monkeypatch, "nchw", enable_cuda_graph="1")
    x = np.random.default_rng(14).standard_normal(x_shape).astype(np.float16)
    x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
    ref = _activate(_reference(x.astype(np.float64), w, b, attrs.get("strides", [1, 1]),
                               attrs.get("pads", [0, 0, 0, 0])), "Relu", [])
    y_dev = ort.OrtValue.ortvalue_from_shape_and_type(list(ref.shape), np.float16, "cuda", 0)
    binding = sess.io_binding()
    binding.bind_ortvalue_input("X", x_dev)
    binding.bind_ortvalue_output("Y", y_dev)
    outs = []
    for _ in range(4):
        sess.run_with_iobinding(binding)
        outs.append(y_dev.numpy().astype(np.float64))
    assert _form_ran(capfd.readouterr().err) == "per-image"
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    _check(outs[-1], ref, "float16")


def test_bad_form_is_refused(monkeypatch):
    model, _, _ = _conv_model(CASES[0][0], CASES[0][1], CASES[0][2], CASES[0][3], "float16", True, "")
    with pytest.raises(Exception, match="Conv2dCompress.*ONNXSPARSE_CUDA_CONV_FORM"):
        _session(model, monkeypatch, "sideways").run(None, {"X": np.zeros(CASES[0][0], np.float32)})


def _nhwc_model(x_shape, oc, kernel, attrs, dtype, bias, act):
    """The op with layout="NHWC": a Transpose into it and one out of it, so that the model's input and
    output stay NCHW (the same I/O as _conv_model)."""
    model, w, b = _conv_model(x_shape, oc, kernel, attrs, dtype, bias, act)
    graph = model.graph
    conv = graph.node[1]
    conv.attribute.append(oh.make_attribute("layout", "NHWC"))
    conv.input[0], conv.output[0] = "Xn", "Yn"
    graph.node.insert(1, oh.make_node("Transpose", ["Xc"], ["Xn"], perm=[0, 2, 3, 1]))
    graph.node.insert(3, oh.make_node("Transpose", ["Yn"], ["Yc"], perm=[0, 3, 1, 2]))
    return model, w, b


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float"])
@pytest.mark.parametrize("bias,act", [(True, ""), (False, "Relu"), (True, "Clip")])
@pytest.mark.parametrize("x_shape,oc,kernel,attrs", CASES, ids=CASE_IDS)
def test_nhwc_layout_matches_dense(monkeypatch, dtype, bias, act, x_shape, oc, kernel, attrs):
    """layout="NHWC" (what compile --conv-layout nhwc writes): the float64 reference, and the same
    values as the NCHW op's NHWC form within the dtype's rounding."""
    model, w, b = _nhwc_model(x_shape, oc, kernel, attrs, dtype, bias, act)
    x = np.random.default_rng(5).standard_normal(x_shape).astype(np.float32)
    x = x.astype(NP[dtype]).astype(np.float32)
    out = _session(model, monkeypatch, "auto").run(None, {"X": x})[0]
    ref = _activate(_reference(x.astype(np.float64), w, b, attrs.get("strides", [1, 1]), attrs.get("pads", [0] * 4)),
                    act, ACTIVATIONS[act])
    _check(out, ref, dtype)
    nchw, _, _ = _conv_model(x_shape, oc, kernel, attrs, dtype, bias, act)
    same = _session(nchw, monkeypatch, "nhwc").run(None, {"X": x})[0]
    # the NCHW op adds the bias after rounding the product to the dtype, this one before: a step apart
    np.testing.assert_allclose(out, same, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype] * max(np.abs(same).max(), 1.0))
