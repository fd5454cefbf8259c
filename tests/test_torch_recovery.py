"""The pipeline of examples/torch_recovery.py on a tiny MLP and its synthetic data set: one-shot 2:4
pruning loses accuracy, fine-tuning with the masks and SR-STE from scratch recover it, and every
sparse model exports, compiles with all masked layers rewritten and scores the same in ONNX Runtime."""

from __future__ import annotations

import importlib.util
import sys

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install '.[torch]')")

from conftest import REPO  # noqa: E402


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("torch_recovery", REPO / "examples" / "torch_recovery.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.mark.kernels
def test_fine_tuning_and_srste_recover_what_one_shot_pruning_loses(example, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = example.synthetic(n=1200, seed=0)
        rows = {row.variant: row for row in example.run(data, "MLP", [0], 20, 10, tmp_path, dynamo=False)}
    finally:
        torch.set_num_threads(threads)
    dense = rows["dense"].mean
    assert dense > 80  # the task is learnable and not trivial
    for method in ("magnitude", "wanda"):
        one_shot, tuned = rows[f"one-shot {method}"].mean, rows[f"fine-tuned {method}"].mean
        assert one_shot < dense - 8, (method, one_shot, dense)  # one-shot 2:4 loses measurably
        assert tuned > dense - 4, (method, tuned, dense)  # fine-tuning wins most of it back
        assert tuned - one_shot > 2 * (dense - tuned)
    assert rows["SR-STE from scratch"].mean > dense - 4
    for variant, row in rows.items():
        if variant == "dense":
            continue
        assert row.rewritten == "3/3", variant  # every masked layer compiled
        assert row.onnx_accuracy == row.accuracy, variant  # ONNX Runtime scores what PyTorch does
    table = example.table(list(rows.values()))
    assert table.count("\n") == len(rows) + 1 and "| MLP | fine-tuned wanda |" in table
