"""Gates, the recommended default and the report, on hand-made figures."""

from __future__ import annotations

import io

import pytest

from training.export import report
from training.export.evaluate import Figures
from training.export.gates import Gates, fastest, judge


def figures(name: str, accuracy: float, throughput: float, **extra: object) -> Figures:
    return Figures(
        name=name,
        file=f"model.{name}.onnx",
        accuracy=accuracy,
        macro_f1=accuracy,
        agreement_fp32=1.0,
        size_bytes=1_000_000,
        params=1000,
        flops=2000,
        latency_ms_p50=1.0,
        latency_ms_p99=2.0,
        throughput_ips=throughput,
        **extra,
    )


def exported() -> list[Figures]:
    fp32 = figures("fp32", 0.98, 100.0, max_abs_diff_torch=2e-6)
    fp32.details["top1_agreement_torch"] = 1.0
    return [
        fp32,
        figures("int8-static", 0.975, 300.0),  # 0.5 points down: passes at 1.0
        figures("pruned-int8", 0.95, 500.0),  # 3 points down: left out
        figures("sparse-90", 0.90, 90.0, kind="study"),
    ]


def test_a_variant_over_the_accuracy_drop_is_left_out_and_fp32_still_promotes() -> None:
    items = exported()
    assert judge(items, reference_accuracy=0.98, gates=Gates(max_accuracy_drop=1.0)) == []
    assert [f.name for f in items if f.in_bundle] == ["fp32", "int8-static"]
    assert "accuracy drop 3.00 points > --max-accuracy-drop 1" in items[2].gate
    assert not items[3].in_bundle and items[3].gate == ""  # the study is never judged
    assert fastest(items) == "int8-static"  # pruned-int8 is faster but did not pass


def test_negative_max_drop_fails_every_variant_and_blocks_promotion() -> None:
    items = exported()
    blocking = judge(items, 0.98, Gates(max_accuracy_drop=-1.0))
    assert blocking == ["fp32: accuracy drop 0.00 points > --max-accuracy-drop -1"]
    assert not any(f.in_bundle for f in items)
    with pytest.raises(ValueError, match="no variant passed"):
        fastest(items)


def test_fp32_without_parity_blocks_promotion() -> None:
    items = exported()
    items[0].max_abs_diff_torch = 3e-3
    blocking = judge(items, 0.98, Gates())
    assert len(blocking) == 1 and "parity with PyTorch fails" in blocking[0]
    assert "3.00e-03" in blocking[0]


def test_a_required_variant_that_fails_or_is_missing_blocks_promotion() -> None:
    items = exported()
    blocking = judge(items, 0.98, Gates(required=("fp32", "pruned-int8", "int8-qat")))
    assert blocking == [
        "pruned-int8: accuracy drop 3.00 points > --max-accuracy-drop 1",
        "int8-qat: required but not produced",
    ]


def test_report_has_a_row_per_variant_and_study_point_and_a_png_plot() -> None:
    items = exported()
    judge(items, 0.98, Gates())
    text = report.markdown(items, "int8-static", ["source: test"], ["a note"], [])
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == 4
    assert "| `int8-static` | yes, default | 97.50% |" in text
    assert "| `pruned-int8` | no (gate) |" in text and "| `sparse-90` | study |" in text
    assert "3.00x |" in rows[1]  # 300 vs 100 img/s
    assert "Recommended default variant: `int8-static`" in text
    buffer = io.BytesIO()
    report.tradeoff_figure(items).savefig(buffer, format="png")
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_a_failed_export_says_why() -> None:
    items = exported()
    blocking = judge(items, 0.98, Gates(max_accuracy_drop=-1.0))
    text = report.markdown(items, None, [], [], blocking)
    assert "**Gates failed; the alias was not moved:**" in text
    assert "- fp32: accuracy drop 0.00 points" in text
