"""The CPU budget (affinity capped by the cgroup quota) and the layout chosen from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.layout import affinity_cores, cgroup_quota, choose_layout, cpu_budget, with_layout
from shared.settings import ServingSettings


def test_cgroup_v2_quota_is_read_in_cpus(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_quota(tmp_path) == pytest.approx(1.5)


def test_cgroup_v2_without_a_limit_has_no_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota(tmp_path) is None


def test_cgroup_v1_quota_is_read_and_minus_one_means_unlimited(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    assert cgroup_quota(tmp_path) == pytest.approx(2.0)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_quota(tmp_path) is None


def test_budget_is_the_quota_rounded_up_never_above_affinity(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU
    assert cpu_budget(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(affinity_cores() + 8) * 100000} 100000\n")
    assert cpu_budget(tmp_path) == affinity_cores()
    assert cpu_budget(tmp_path / "missing") == affinity_cores()


def test_default_layout_is_one_batch_over_every_core() -> None:
    layout = choose_layout(2)
    assert (layout.intra_op_threads, layout.inference_workers, layout.chosen_by) == (
        2,
        1,
        "default",
    )
    assert choose_layout(1).intra_op_threads == 1


def test_explicit_threads_alone_keep_one_batch_in_flight() -> None:
    layout = choose_layout(4, intra_op_threads=4)
    assert (layout.intra_op_threads, layout.inference_workers, layout.chosen_by) == (
        4,
        1,
        "settings",
    )


def test_explicit_workers_split_the_cores_between_them() -> None:
    assert choose_layout(4, inference_workers=2).intra_op_threads == 2
    assert choose_layout(4, intra_op_threads=1, inference_workers=3).inference_workers == 3


def test_classify_splits_the_budget_between_the_batches_in_flight() -> None:
    from services.classify.service import ClassifyService

    cores = cpu_budget()
    chosen = with_layout(ClassifyService(), ServingSettings(model_uri="models:/classify/1"))
    assert (chosen.intra_op_threads(), chosen.inference_workers) == (cores, 1)
    split = with_layout(ClassifyService(), ServingSettings(inference_workers=2))
    assert (split.intra_op_threads(), split.inference_workers) == (max(1, cores // 2), 2)
    pinned = with_layout(ClassifyService(), ServingSettings(onnx_intra_op_threads=2))
    assert (pinned.intra_op_threads(), pinned.inference_workers) == (2, 1)
    both = with_layout(
        ClassifyService(), ServingSettings(onnx_intra_op_threads=1, inference_workers=3)
    )
    assert (both.intra_op_threads(), both.inference_workers) == (1, 3)


def test_services_without_batched_onnx_models_keep_their_settings() -> None:
    from services.explain.service import ExplainService

    settings = ExplainService.settings_class()
    kept = with_layout(ExplainService(), settings)
    assert (kept.onnx_intra_op_threads, kept.inference_workers) == (
        settings.onnx_intra_op_threads,
        settings.inference_workers,
    )
