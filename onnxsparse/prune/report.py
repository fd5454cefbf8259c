"""Plain-text tables for the prune and sensitivity reports (``--json`` gives the same as data)."""

from __future__ import annotations

import math

from .pruner import PruneReport
from .sensitivity import LayerSensitivity


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _shape(shape) -> str:
    return "x".join(str(d) for d in shape)


def prune_text(report: PruneReport) -> str:
    lines = [f"method {report.method} {report.n}:{report.m}, calibration: {report.calibration}", ""]
    rows = [[r.name, r.op_type, _shape(r.shape), f"{r.params:,}", f"{r.retained:.3f}",
             "-" if r.layer_error is None else f"{r.layer_error:.4f}", r.method] for r in report.layers]
    lines += _table(["layer", "op", "weight", "params", "kept |w|", "layer error", "method"], rows)
    if report.skipped:
        lines += ["", f"left dense ({len(report.skipped)}):"]
        lines += [f"  {s.node} ({s.op_type}): {s.reason}" for s in report.skipped]
    share = report.pruned_params / report.total_params if report.total_params else 0.0
    lines += [
        "",
        f"pruned {report.pruned_params:,} of {report.total_params:,} Conv/MatMul/Gemm weight parameters "
        f"({share:.1%}) in {len(report.layers)} layer(s) to {report.n}:{report.m}",
    ]
    if report.output_error is not None:
        what = "held-out data" if report.output_error_selection is None else "verification data"
        flips = "" if math.isnan(report.output_error.flips) else f", {report.output_error.text('flips')}"
        lines.append(f"model output vs dense, {what}: relative L2 {report.output_error.rel_l2:.4f}, "
                     f"cosine {report.output_error.cosine:.5f}{flips} ({report.holdout})")
    if report.output_error_selection is not None:
        lines.append(f"model output vs dense, selection data: relative L2 {report.output_error_selection.rel_l2:.4f}, "
                     f"cosine {report.output_error_selection.cosine:.5f} (held out, chose the layers and methods)")
    if report.output_error_fit is not None:
        lines.append(f"model output vs dense, fit data:      relative L2 {report.output_error_fit.rel_l2:.4f}, "
                     f"cosine {report.output_error_fit.cosine:.5f}")
    if report.recovery is not None:
        r = report.recovery
        lines.append(f"recovery: {r['steps']} steps at learning rate {r['lr']:g}, held-out relative L2 "
                     f"{r['held_out_before']['relative_l2']:.4f} -> {r['held_out_after']['relative_l2']:.4f} "
                     f"({'kept' if r['kept'] else 'not kept: the one-shot weights are written'})")
    if report.note:
        lines.append(f"note: {report.note}")
    return "\n".join(lines)


def sensitivity_text(found: list[LayerSensitivity], method: str, n: int, m: int) -> str:
    rows = [[s.name, s.op_type, _shape(s.shape), f"{s.params:,}",
             "-" if s.layer_error is None else f"{s.layer_error:.4f}",
             f"{s.output.rel_l2:.4f}", f"{s.output.cosine:.5f}"] for s in found]
    header = ["layer", "op", "weight", "params", "layer error", "output rel L2", "output cosine"]
    if method == "auto":
        header.append("best method")
        rows = [row + [s.method] for row, s in zip(rows, found)]
    return "\n".join([f"each layer pruned alone ({method} {n}:{m}), most harmful first; "
                      "output errors on held-out data", ""] + _table(header, rows))


def plot_sensitivity(found: list[LayerSensitivity], path: str) -> None:
    """Bar chart of each layer's output error (matplotlib, imported only here)."""
    from ..errors import OnnxSparseError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise OnnxSparseError("--plot needs matplotlib (pip install matplotlib)") from None
    ordered = sorted(found, key=lambda s: s.output.rel_l2)
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.22 * len(ordered) + 1)))
    ax.barh([s.name for s in ordered], [s.output.rel_l2 for s in ordered], color="tab:blue")
    ax.set_xlabel("model output relative L2 error, layer pruned alone")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise OnnxSparseError(f"{path}: cannot write the plot: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
