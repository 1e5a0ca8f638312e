"""The CPU budget (affinity capped by the cgroup quota) and the layout chosen from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.layout import (
    MAX_DEFAULT_PROCESSES,
    Layout,
    affinity_cores,
    cgroup_quota,
    choose_layout,
    cpu_budget,
    service_layout,
    with_layout,
)
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


def shape(layout: Layout) -> tuple[int, int, int, str]:
    return (layout.processes, layout.intra_op_threads, layout.inference_workers, layout.chosen_by)


def test_default_layout_is_a_process_per_core_with_one_thread_per_core_in_all() -> None:
    assert shape(choose_layout(1)) == (1, 1, 1, "default")
    assert shape(choose_layout(2)) == (2, 1, 1, "default")
    assert shape(choose_layout(4)) == (4, 1, 1, "default")
    assert shape(choose_layout(16)) == (MAX_DEFAULT_PROCESSES, 4, 1, "default")  # models x4


def test_one_process_gets_every_core_and_its_batches_split_them() -> None:
    assert shape(choose_layout(4, processes=1)) == (1, 4, 1, "settings")
    assert shape(choose_layout(4, processes=1, inference_workers=2)) == (1, 2, 2, "settings")
    assert (
        choose_layout(4, processes=1, intra_op_threads=1, inference_workers=3).inference_workers
        == 3
    )


def test_explicit_threads_and_workers_win_over_the_share() -> None:
    assert shape(choose_layout(2, intra_op_threads=1)) == (2, 1, 1, "settings")
    assert shape(choose_layout(4, inference_workers=2)) == (4, 1, 2, "settings")
    assert shape(choose_layout(2, processes=3)) == (3, 1, 1, "settings")


def test_classify_gets_the_layout_of_its_budget() -> None:
    from services.classify.service import ClassifyService

    cores = cpu_budget()
    default = choose_layout(cores)
    chosen = with_layout(ClassifyService(), ServingSettings(model_uri="models:/classify/1"))
    assert (chosen.server_processes, chosen.intra_op_threads(), chosen.inference_workers) == (
        default.processes,
        default.intra_op_threads,
        1,
    )
    assert service_layout(ClassifyService, ServingSettings()).chosen_by == "default"
    alone = with_layout(ClassifyService(), ServingSettings(server_processes=1, inference_workers=2))
    assert (alone.intra_op_threads(), alone.inference_workers) == (max(1, cores // 2), 2)
    pinned = with_layout(ClassifyService(), ServingSettings(onnx_intra_op_threads=2))
    assert (pinned.intra_op_threads(), pinned.inference_workers) == (2, 1)


def test_a_service_with_state_of_its_own_in_each_process_runs_one() -> None:
    from services.similarity.service import SimilarityService

    assert SimilarityService.single_process
    assert service_layout(SimilarityService, ServingSettings()).processes == 1


def test_services_without_batched_onnx_models_keep_their_settings() -> None:
    from services.explain.service import ExplainService

    settings = ExplainService.settings_class()
    kept = with_layout(ExplainService(), settings)
    assert (kept.onnx_intra_op_threads, kept.inference_workers) == (
        settings.onnx_intra_op_threads,
        settings.inference_workers,
    )
    assert service_layout(ExplainService, settings).processes == 1
