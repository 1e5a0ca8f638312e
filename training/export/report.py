"""The trade-off report: a markdown table of every variant and study point, and a scatter plot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from training.export.evaluate import THROUGHPUT_BATCH, Figures

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLUMNS = (
    "variant",
    "in bundle",
    "top-1",
    "macro F1",
    "drop (pts)",
    "agree fp32",
    "attr corr",
    "max abs diff",
    "size MB",
    "params",
    "MFLOPs",
    "p50 ms (b1)",
    "p99 ms (b1)",
    f"img/s (b{THROUGHPUT_BATCH})",
    "x fp32",
)


def _status(fig: Figures, default: str | None) -> str:
    if fig.kind == "study":
        return "study"
    if fig.kind == "torch":
        return "torch, report" if not fig.gate else "torch, parity fails"
    if not fig.in_bundle:
        return "no (gate)"
    return "yes, default" if fig.name == default else "yes"


def row(fig: Figures, fp32_throughput: float, default: str | None) -> list[str]:
    """One table row, formatted."""
    drop = fig.details.get("accuracy_drop_points")
    return [
        f"`{fig.name}`",
        _status(fig, default),
        f"{fig.accuracy:.2%}",
        f"{fig.macro_f1:.4f}",
        "" if drop is None else f"{drop:+.2f}",
        f"{fig.agreement_fp32:.2%}",
        "" if (corr := fig.details.get("attribution_spearman")) is None else f"{corr:.3f}",
        "" if fig.max_abs_diff_torch is None else f"{fig.max_abs_diff_torch:.1e}",
        f"{fig.size_bytes / 1e6:.2f}",
        f"{fig.params / 1e6:.2f}M",
        f"{fig.flops / 1e6:.1f}",
        f"{fig.latency_ms_p50:.2f}",
        f"{fig.latency_ms_p99:.2f}",
        f"{fig.throughput_ips:.0f}",
        f"{fig.throughput_ips / fp32_throughput:.2f}x" if fp32_throughput else "",
    ]


def table(figures: Sequence[Figures], default: str | None) -> str:
    """The markdown table (fp32 throughput is the x-column's baseline)."""
    base = next((f.throughput_ips for f in figures if f.name == "fp32"), 0.0)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(fig, base, default)) + " |" for fig in figures]
    return "\n".join(lines)


def markdown(
    figures: Sequence[Figures],
    default: str | None,
    context: Sequence[str],
    notes: Sequence[str],
    blocking: Sequence[str],
) -> str:
    """The whole report.md: what was exported, the table, the gates' verdict, the notes."""
    verdict = (
        ["**Gates failed; the alias was not moved:**", *[f"- {b}" for b in blocking]]
        if blocking
        else [f"All required gates passed. Recommended default variant: `{default}`."]
    )
    failed = [f"- `{f.name}` left out: {f.gate}" for f in figures if f.kind != "study" and f.gate]
    return "\n".join(
        [
            "# Export report",
            "",
            *[f"- {line}" for line in context],
            "",
            table(figures, default),
            "",
            *verdict,
            *failed,
            "",
            "## Notes",
            "",
            *[f"- {note}" for note in notes],
            "",
        ]
    )


def tradeoff_figure(figures: Sequence[Figures]) -> Figure:
    """Accuracy vs batch-1 latency; marker area follows file size; study points hollow,
    PyTorch-runtime rows square."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    largest = max(f.size_bytes for f in figures) or 1
    for item in figures:
        if item.kind == "study":
            style = {"facecolors": "none", "edgecolors": "tab:gray"}
        elif item.kind == "torch":
            style = {"facecolors": "tab:orange", "edgecolors": "black", "marker": "s"}
        else:
            colour = "tab:blue" if item.in_bundle else "tab:red"
            style = {"facecolors": colour, "edgecolors": "black"}
        point = (item.latency_ms_p50, item.accuracy * 100)
        ax.scatter(*point, s=60 + 900 * item.size_bytes / largest, alpha=0.6, **style)
        ax.annotate(item.name, point, fontsize=8, xytext=(6, 4), textcoords="offset points")
    ax.set_xlabel("latency p50, batch 1 (ms; onnxruntime, squares: PyTorch)")
    ax.set_ylabel("held-out top-1 accuracy (%)")
    ax.set_title("accuracy vs latency (marker area ~ file size; hollow = sparsity study)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
