"""The transformer studies, --quick, against a real MLflow server: runs, tables, plots."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from tests.procs import run_module

pytestmark = pytest.mark.integration


def run_study(name: str, mlflow_server: str, tmp_path: Path) -> tuple[Run, dict[str, Run], str]:
    """Run `python -m training.studies NAME --quick`; its parent run, children by name, report."""
    experiment = f"study-{name}"
    run_module("training.studies", name, "--quick", "--threads", "1", "--out", str(tmp_path),
               "--experiment", experiment, env={"MLFLOW_TRACKING_URI": mlflow_server},
               log=tmp_path / "study.log")  # fmt: skip
    client = MlflowClient(mlflow_server)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.data.tags["mlflow.runName"]: r for r in runs if r is not parent}
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children.values())
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert f"{name}.md" in artifacts
    return parent, children, (tmp_path / f"{name}.md").read_text()


def plots(mlflow_server: str, run: Run) -> set[str]:
    return {a.path for a in MlflowClient(mlflow_server).list_artifacts(run.info.run_id, "plots")}


def metric_history(mlflow_server: str, run: Run, key: str) -> dict[int, float]:
    history = MlflowClient(mlflow_server).get_metric_history(run.info.run_id, key)
    return {m.step: m.value for m in history}


def test_attention_study_ranks_heads_and_measures_quadratic_attention(
    mlflow_server: str, tmp_path: Path
) -> None:
    parent, children, report = run_study("attention", mlflow_server, tmp_path)
    assert set(children) == {"classifier", "head importance", "attention cost"}
    assert parent.data.metrics["test_accuracy"] > 3 / 12  # learned: chance is 1/12
    heads = children["head importance"].data.metrics
    assert {"mask_drop_l1h1", "grad_score_l0h0", "entropy_l1h0"} <= set(heads)
    assert all(heads[f"grad_score_l{l}h{h}"] > 0 for l in range(2) for h in range(2))  # noqa: E741
    cost = children["attention cost"]
    scratch = metric_history(mlflow_server, cost, "scratch_mib")
    sdpa = metric_history(mlflow_server, cost, "sdpa_mib")
    assert scratch[128] / scratch[32] > 10  # the n x n scores: 16x for 4x the length
    assert sdpa[128] / sdpa[32] < scratch[128] / scratch[32] / 2
    assert {"plots/pruning.png", "plots/attention_time.png", "plots/entropy.png"} <= plots(
        mlflow_server, parent
    )
    assert "Fitted exponent" in report and "| heads kept |" in report


def test_normalization_study_trains_every_setting(mlflow_server: str, tmp_path: Path) -> None:
    from training.studies.normalization import SETTINGS

    parent, children, report = run_study("normalization", mlflow_server, tmp_path)
    assert set(children) == {f"{s.name} seed 0" for s in SETTINGS}
    for child in children.values():
        assert 0 <= child.data.metrics["test_accuracy"] <= 1
        assert child.data.metrics["train_seconds"] > 0
    assert all(f"| {s.name} |" in report for s in SETTINGS)
    assert "plots/training_curves.png" in plots(mlflow_server, parent)


def test_decoding_study_measures_exposure_and_sampling_diversity(
    mlflow_server: str, tmp_path: Path
) -> None:
    parent, children, report = run_study("decoding", mlflow_server, tmp_path)
    for name in ("teacher forcing", "scheduled sampling"):
        gap = children[f"exposure {name}"].data.metrics
        assert 0 <= gap["free_token_accuracy"] <= 1 and 0 <= gap["forced_token_accuracy"] <= 1
    hot = children["decode temperature 1.5"].data.metrics
    cold = children["decode temperature 0.3"].data.metrics
    assert hot["distinct_2"] > cold["distinct_2"]  # a hotter softmax writes more varied text
    assert "rouge_l" in children["decode beam 2"].data.metrics
    assert {"plots/beam_width.png", "plots/quality_vs_diversity.png"} <= plots(
        mlflow_server, parent
    )
    assert "Copy-the-function-name baseline" in report


def test_tricks_study_checks_accumulation_autocast_and_freezing(
    mlflow_server: str, tmp_path: Path
) -> None:
    parent, children, report = run_study("tricks", mlflow_server, tmp_path)
    assert parent.data.metrics["accumulation_max_relative_diff"] < 1e-4
    assert parent.data.metrics["accumulation_largest_gradient"] > 0
    trainable = {n: c.data.metrics["trainable_parameters"] for n, c in children.items()
                 if "trainable_parameters" in c.data.metrics}  # fmt: skip
    assert trainable["encoder frozen"] < trainable["embeddings frozen"] < trainable["bf16 autocast"]
    memory = {
        n: c.data.metrics["step_mib"] for n, c in children.items() if "step_mib" in c.data.metrics
    }
    assert memory["fp32, 4 x 16 accumulated"] < memory["fp32, batch 64"]  # a quarter of the batch
    assert "| bf16 autocast |" in report
