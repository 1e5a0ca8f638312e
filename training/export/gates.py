"""The export's gates: which variants enter the bundle, whether the alias may move, the default."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from training.export.evaluate import Figures
from training.export.onnx import PARITY_ATOL


@dataclass(frozen=True)
class Gates:
    """A variant enters the bundle when its accuracy drop (points vs the PyTorch model) is at
    most `max_accuracy_drop` and, where it has a PyTorch twin, parity holds; the alias moves only
    when every `required` variant entered."""

    max_accuracy_drop: float = 1.0
    parity_atol: float = PARITY_ATOL
    required: tuple[str, ...] = ("fp32",)


def judge(figures: Sequence[Figures], reference_accuracy: float, gates: Gates) -> list[str]:
    """Set `in_bundle`/`gate` on every variant; return the reasons promotion is blocked."""
    for fig in figures:
        if fig.kind != "variant":
            continue
        reasons = []
        drop = (reference_accuracy - fig.accuracy) * 100
        fig.details["accuracy_drop_points"] = round(drop, 4)
        if drop > gates.max_accuracy_drop:
            reasons.append(
                f"accuracy drop {drop:.2f} points > --max-accuracy-drop {gates.max_accuracy_drop:g}"
            )
        if fig.max_abs_diff_torch is not None:
            agreement = fig.details.get("top1_agreement_torch", 1.0)
            if fig.max_abs_diff_torch > gates.parity_atol or agreement < 1.0:
                reasons.append(
                    f"parity with PyTorch fails: max abs logit diff {fig.max_abs_diff_torch:.2e} "
                    f"(gate {gates.parity_atol:.0e}), top-1 agreement {agreement:.2%}"
                )
        fig.gate = "; ".join(reasons)
        fig.in_bundle = not reasons
    produced = {fig.name: fig for fig in figures if fig.kind == "variant"}
    blocking = []
    for name in gates.required:
        if name not in produced:
            blocking.append(f"{name}: required but not produced")
        elif not produced[name].in_bundle:
            blocking.append(f"{name}: {produced[name].gate}")
    return blocking


def fastest(figures: Sequence[Figures]) -> str:
    """The recommended default: the bundled variant with the highest batch-32 throughput."""
    bundled = [fig for fig in figures if fig.in_bundle]
    if not bundled:
        raise ValueError("no variant passed its gates")
    return max(bundled, key=lambda fig: fig.throughput_ips).name
