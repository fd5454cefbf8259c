"""CheckSparsity: every eligibility rule, positive and negative, with the reason it gives."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import DTYPES, HEAD, make_model, model_with_weight_in_subgraph, sparse_weight

from onnxsparse.api import check_model
from onnxsparse.compiler import CheckSparsity, ModelGraph



def matmul_model(weight: np.ndarray, dtype: str = "float", k: int | None = None):
    k = weight.shape[0] if k is None else k
    n = weight.shape[1]
    return make_model(f"{HEAD} g ({dtype}[2,{k}] x) => ({dtype}[2,{n}] y) {{ y = MatMul(x, W) }}", W=weight)


def only_layer(model):
    report = check_model(model)
    assert len(report.layers) == 1
    return report.layers[0]


def assert_refused(model, reason: str):
    layer = only_layer(model)
    assert not layer.eligible
    assert layer.reason == reason
    return layer


# --- the weight must be constant ------------------------------------------------------------------


def test_initializer_weight_is_eligible():
    layer = only_layer(matmul_model(sparse_weight((8, 4), "kn")))
    assert layer.eligible and layer.reason is None
    assert (layer.weight, layer.source, layer.shape, layer.dtype, layer.layout, layer.share) == (
        "W", "W", (8, 4), "float", "kn", 1.0,
    )


def test_node_without_domain_field_is_verified():
    from onnx import helper

    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMul", ["x", "W"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", 1, [2, 8])],
            [helper.make_tensor_value_info("y", 1, [2, 4])],
            [onnx.numpy_helper.from_array(sparse_weight((8, 4), "kn"), "W")],
        )
    )
    assert only_layer(model).eligible


def test_constant_node_weight_is_eligible():
    model = make_model(f"""{HEAD} g (float[2,4] x) => (float[2,2] y) {{
        w = Constant<value = float[4,2] {{1, 0, 0, 0, 0, 2, 0, 0}}>()
        y = MatMul(x, w) }}""")
    layer = only_layer(model)
    assert layer.eligible and layer.source == "w"


def test_identity_chain_of_constant_node_is_eligible():
    model = make_model(f"""{HEAD} g (float[2,4] x) => (float[2,2] y) {{
        w = Constant<value = float[4,2] {{1, 0, 0, 0, 0, 2, 0, 0}}>()
        i1 = Identity(w)
        i2 = Identity(i1)
        y = MatMul(x, i2) }}""")
    layer = only_layer(model)
    assert layer.eligible and (layer.weight, layer.source) == ("i2", "w")


def test_identity_of_initializer_is_eligible():
    model = make_model(
        f"{HEAD} g (float[2,8] x) => (float[2,4] y) {{ i = Identity(W) \n y = MatMul(x, i) }}",
        W=sparse_weight((8, 4), "kn"),
    )
    layer = only_layer(model)
    assert layer.eligible and (layer.weight, layer.source) == ("i", "W")


def test_computed_weight_is_refused():
    model = make_model(
        f"{HEAD} g (float[2,8] x) => (float[2,4] y) {{ t = Transpose(W) \n y = MatMul(x, t) }}",
        W=sparse_weight((4, 8), "nk"),
    )
    assert_refused(model, "weight 't' is computed by a Transpose node, so it is not constant")


def test_weight_that_is_a_graph_input_is_refused():
    model = make_model(f"{HEAD} g (float[2,8] x, float[8,4] W) => (float[2,4] y) {{ y = MatMul(x, W) }}")
    assert_refused(model, "weight 'W' is a graph input, so it is not constant")


def test_initializer_also_listed_as_graph_input_is_refused():
    model = make_model(
        f"{HEAD} g (float[2,8] x, float[8,4] W) => (float[2,4] y) {{ y = MatMul(x, W) }}",
        W=sparse_weight((8, 4), "kn"),
    )
    assert_refused(model, "weight 'W' is a graph input, so it is not constant")


def test_identity_of_graph_input_is_refused():
    model = make_model(
        f"{HEAD} g (float[2,8] x, float[8,4] W) => (float[2,4] y) {{ i = Identity(W) \n y = MatMul(x, i) }}",
        W=sparse_weight((8, 4), "kn"),
    )
    assert_refused(model, "weight 'i' comes from graph input 'W', so it is not constant")


def test_constant_as_first_matmul_input_is_refused():
    model = make_model(f"{HEAD} g (float[8,2] x) => (float[4,2] y) {{ y = MatMul(W, x) }}", W=sparse_weight((4, 8), "nk"))
    assert_refused(
        model,
        "the constant 'W' is the first input of MatMul (W @ X); only X @ W with a constant second input is supported",
    )


# --- dtype -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float", "float16", "bfloat16"])
def test_supported_dtypes_are_eligible(dtype):
    layer = only_layer(matmul_model(sparse_weight((8, 4), "kn", DTYPES[dtype]), dtype))
    assert layer.eligible and layer.dtype == dtype


def test_double_is_refused():
    model = matmul_model(sparse_weight((8, 4), "kn", np.float64), "double")
    assert_refused(model, "dtype double is not supported (only float, float16, bfloat16)")


# --- op variants -----------------------------------------------------------------------------------


def test_matmul_weight_of_rank_3_is_refused():
    model = make_model(
        f"{HEAD} g (float[3,2,8] x) => (float[3,2,4] y) {{ y = MatMul(x, W) }}",
        W=np.zeros((3, 8, 4), np.float32),
    )
    assert_refused(model, "MatMul weight has rank 3; only rank-2 weights are supported")


def test_matmul_input_of_rank_5_is_refused():
    model = make_model(f"{HEAD} g (float[1,1,1,2,8] x) => (float[1,1,1,2,4] y) {{ y = MatMul(x, W) }}",
                       W=sparse_weight((8, 4), "kn"))
    assert_refused(model, "MatMul input A has rank 5; only ranks 1 to 4 are supported")


@pytest.mark.parametrize("rank", [1, 2, 3, 4])
def test_matmul_input_of_rank_1_to_4_is_eligible(rank):
    shape = ",".join(["2"] * (rank - 1) + ["8"])
    out = ",".join(["2"] * (rank - 1) + ["4"])
    model = make_model(f"{HEAD} g (float[{shape}] x) => (float[{out}] y) {{ y = MatMul(x, W) }}", W=sparse_weight((8, 4), "kn"))
    assert only_layer(model).eligible


def test_conv_1d_is_eligible():
    model = make_model(f"{HEAD} g (float[1,4,9] x) => (float[1,8,7] y) {{ y = Conv(x, W) }}",
                       W=np.zeros((8, 4, 3), np.float32))
    layer = only_layer(model)
    assert layer.eligible and layer.layout == "oihw" and layer.shape == (8, 4, 3)


def test_conv_3d_is_refused():
    model = make_model(f"{HEAD} g (float[1,4,5,5,5] x) => (float[1,8,3,3,3] y) {{ y = Conv(x, W) }}",
                       W=np.zeros((8, 4, 3, 3, 3), np.float32))
    assert_refused(model, "Conv is 3-D (weight rank 5); only 1-D and 2-D Conv are supported")


def test_gemm_transb_uses_nk_layout():
    model = make_model(f"{HEAD} g (float[2,8] x) => (float[2,4] y) {{ y = Gemm<transB=1>(x, B) }}",
                       B=sparse_weight((4, 8), "nk"))
    layer = only_layer(model)
    assert layer.eligible and layer.layout == "nk"


def test_gemm_transb_checks_groups_along_k_not_n():
    # 2:4 down the columns (the "kn" axis) but dense along K of a transB=1 weight.
    weight = sparse_weight((8, 8), "kn")
    model = make_model(f"{HEAD} g (float[2,8] x) => (float[2,8] y) {{ y = Gemm<transB=1>(x, B) }}", B=weight)
    layer = only_layer(model)
    assert not layer.eligible and layer.reason.endswith("of groups have more than 2 non-zeros")


# --- K a multiple of 4 -------------------------------------------------------------------------------


def test_k_not_multiple_of_4_is_refused():
    assert_refused(matmul_model(np.zeros((6, 4), np.float32)), "K = 6 is not a multiple of 4")


def test_gemm_transb_k_not_multiple_of_4_is_refused():
    model = make_model(f"{HEAD} g (float[2,6] x) => (float[2,8] y) {{ y = Gemm<transB=1>(x, B) }}",
                       B=np.zeros((8, 6), np.float32))
    assert_refused(model, "K = 6 is not a multiple of 4")


def test_depthwise_conv_is_refused():
    model = make_model(f"{HEAD} g (float[1,8,5,5] x) => (float[1,8,3,3] y) {{ y = Conv<group=8>(x, W) }}",
                       W=np.zeros((8, 1, 3, 3), np.float32))
    assert_refused(model, "C/group = 1 is not a multiple of 4")


def test_conv_channels_not_multiple_of_4_is_refused_even_when_k_is():
    # C=2, KH*KW=4: K = 8 is a multiple of 4, but groups run along C.
    model = make_model(f"{HEAD} g (float[1,2,5,5] x) => (float[1,4,4,4] y) {{ y = Conv(x, W) }}",
                       W=np.zeros((4, 2, 2, 2), np.float32))
    assert_refused(model, "C/group = 2 is not a multiple of 4")


def test_grouped_conv_with_4_channels_per_group_is_eligible():
    model = make_model(f"{HEAD} g (float[1,8,5,5] x) => (float[1,6,3,3] y) {{ y = Conv<group=2>(x, W) }}",
                       W=sparse_weight((6, 4, 3, 3), "oihw"))
    layer = only_layer(model)
    assert layer.eligible and layer.layout == "oihw"


# --- 2:4 groups --------------------------------------------------------------------------------------


def test_groups_not_2_4_are_refused_with_their_share():
    weight = sparse_weight((8, 4), "kn")  # 8 groups: 2 rows of groups (K=8) x 4 columns
    weight[0:4, 0] = 1.0  # column 0, first group: 4 non-zeros
    weight[4:8, 1] = 1.0
    weight[0:3, 2] = 1.0  # 3 non-zeros
    layer = assert_refused(matmul_model(weight), "37.5% of groups have more than 2 non-zeros")
    assert layer.share == pytest.approx(0.625)


def test_conv_groups_run_along_input_channels():
    weight = sparse_weight((4, 4, 3, 3), "oihw")
    # 2:4 along KW but 4 non-zeros along C at one kernel position: not compliant.
    weight[0, :, 1, 1] = 1.0
    layer = assert_refused(
        make_model(f"{HEAD} g (float[1,4,5,5] x) => (float[1,4,3,3] y) {{ y = Conv(x, W) }}", W=weight),
        f"{100 / 36:.1f}% of groups have more than 2 non-zeros",
    )
    assert layer.share == pytest.approx(35 / 36)


def test_negative_zero_counts_as_zero():
    weight = np.array([[-0.0], [-0.0], [1.0], [2.0]], np.float32)
    assert only_layer(matmul_model(weight)).eligible


# --- sharing, subgraphs, no modification -----------------------------------------------------------


def test_weight_shared_with_an_ineligible_node_stays_eligible():
    weight = sparse_weight((8, 8), "kn")
    model = make_model(
        f"{HEAD} g (float[2,8] x) => (float[2,8] y, float[2,8] z) {{ y = MatMul(x, W) \n z = Gemm<transB=1>(x, W) }}",
        W=weight,
    )
    eligible = {layer.op: layer.eligible for layer in check_model(model).layers}
    assert eligible == {"MatMul": True, "Gemm": False}


def test_nodes_inside_subgraphs_are_checked_with_their_scope():
    model = model_with_weight_in_subgraph()
    layers = check_model(model).layers
    assert [(layer.op, layer.visited, layer.eligible, layer.scope) for layer in layers] == [
        ("MatMul", True, True, ""),
        ("MatMul", True, True, "the then_branch of If ''"),
    ]


def test_verifier_never_modifies():
    model = matmul_model(sparse_weight((8, 4), "kn"))
    before = model.SerializeToString()
    graph = ModelGraph(model)
    result = CheckSparsity()(graph)
    assert result.modified is False
    assert model.SerializeToString() == before
    assert graph.to_model().graph.node[0].op_type == "MatMul"


def test_report_to_dict_is_json_ready():
    import json

    report = check_model(matmul_model(np.zeros((6, 4), np.float32)))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["layers"][0]["reason"] == "K = 6 is not a multiple of 4"
    assert data["eligible"] == 0 and data["total"] == 1
