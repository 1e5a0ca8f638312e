"""The backbone and curriculum studies (--quick) against a real MLflow server, and seeding."""

from __future__ import annotations

import contextlib
import io
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from training.studies import backbones, common, curriculum, vision

pytestmark = pytest.mark.integration

EXPERIMENT = "studies-vision"


@dataclass(frozen=True)
class Studies:
    client: MlflowClient
    out: Path
    log: str

    def parent(self, study: str) -> Run:
        (run,) = self.client.search_runs(
            [self.client.get_experiment_by_name(EXPERIMENT).experiment_id],
            f"tags.`modelplane.study` = '{study}'",
        )
        return run

    def children(self, parent: Run) -> dict[str, Run]:
        runs = self.client.search_runs(
            [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        )
        return {run.info.run_name: run for run in runs}


@pytest.fixture(scope="module")
def studies(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studies]:
    """Both studies in this process (saves two interpreter starts), on one thread."""
    out = tmp_path_factory.mktemp("studies")
    threads = torch.get_num_threads()
    log = io.StringIO()
    common = ["--quick", "--threads", "1", "--experiment", EXPERIMENT]
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(log):
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        assert backbones.main([*common, "--out", str(out / "backbones")]) == 0
        assert curriculum.main([*common, "--out", str(out / "curriculum")]) == 0
    torch.set_num_threads(threads)
    yield Studies(MlflowClient(mlflow_server, mlflow_server), out, log.getvalue())


def test_backbone_study_has_a_child_run_per_setting_with_every_figure(studies: Studies) -> None:
    children = studies.children(studies.parent("backbones"))
    assert set(children) == set(backbones.settings(quick=True))
    for run in children.values():
        metrics = run.data.metrics
        for key in ("test_accuracy", "parameters", "flops_per_image", "train_seconds"):
            assert metrics[key] > 0, (run.info.run_name, key)
        assert 0 < metrics["onnx_ms_batch1"] < metrics["onnx_ms_batch32"]
    figures = {name: run.data.metrics for name, run in children.items()}
    # ResNet-18 dwarfs the small DenseNets; keeping all channels (compression 1) costs more
    assert figures["resnet18"]["parameters"] > 50 * figures["densenet-k16-c1.0"]["parameters"]
    for growth in (8, 16):
        kept, halved = figures[f"densenet-k{growth}-c1.0"], figures[f"densenet-k{growth}-c0.5"]
        assert kept["parameters"] > halved["parameters"]
        assert kept["flops_per_image"] > halved["flops_per_image"]
    assert figures["densenet-k16-c0.5"]["parameters"] > figures["densenet-k8-c0.5"]["parameters"]


def test_backbone_study_writes_the_table_and_logs_plots_and_feature_maps(studies: Studies) -> None:
    parent = studies.parent("backbones")
    table = (studies.out / "backbones" / "backbones.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0].startswith("| setting | test acc |") and len(rows) == 1 + 5
    resnet = studies.children(parent)["resnet18"].data.metrics
    assert f"| resnet18 | {resnet['test_accuracy']:.2%} |" in table
    assert f"{resnet['parameters']:,.0f}" in table
    logged = {a.path for a in studies.client.list_artifacts(parent.info.run_id)}
    plots = {a.path for a in studies.client.list_artifacts(parent.info.run_id, "plots")}
    assert "backbones.md" in logged
    assert plots == {"plots/backbones.png", "plots/feature_maps.png", "plots/activations.png"}
    for name in ("backbones.png", "feature_maps.png", "activations.png"):
        assert (studies.out / "backbones" / name).read_bytes()[:4] == b"\x89PNG"
    assert "[backbones] 5/5 densenet-k16-c1.0" in studies.log


def test_curriculum_study_reports_mean_and_spread_over_seeds(studies: Studies) -> None:
    parent = studies.parent("curriculum")
    children = studies.children(parent)
    assert set(children) == {f"{a}-seed{s}" for a in curriculum.QUICK_ARMS for s in (0, 1)}
    assert children["curriculum-seed0"].data.params["curriculum"] == "True"
    assert children["randaugment-seed1"].data.params["augment"] == "randaugment"
    history = studies.client.get_metric_history(
        children["curriculum-seed0"].info.run_id, "curriculum_pool"
    )
    assert [int(m.value) for m in sorted(history, key=lambda m: m.step)] == [36, 120]
    metrics = parent.data.metrics
    for arm in curriculum.QUICK_ARMS:
        accuracy = [children[f"{arm}-seed{s}"].data.metrics["test_accuracy"] for s in (0, 1)]
        assert metrics[f"{arm}.test_accuracy_mean"] == pytest.approx(statistics.mean(accuracy))
        assert metrics[f"{arm}.test_accuracy_sd"] == pytest.approx(statistics.stdev(accuracy))
    table = (studies.out / "curriculum" / "curriculum.md").read_text()
    assert "| plain | 2 |" in table and " ± " in table
    assert (studies.out / "curriculum" / "curriculum.png").read_bytes()[:4] == b"\x89PNG"


def test_the_same_seed_reproduces_the_same_metrics_exactly(mlflow_server: str) -> None:
    """Curriculum order, RandAugment draws, shuffling and init all follow --seed."""
    flags = ["--quick", "--arch", "densenet", "--growth-rate", "4", "--block-config", "2,2"]
    flags += ["--image-size", "8", "--train-limit", "120", "--curriculum"]
    flags += ["--augment", "randaugment"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()):
            patch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
            common.connect(1, EXPERIMENT)
            with mlflow.start_run(run_name="reproducibility"):
                first, again, other = (
                    vision.train_setting(name, [*flags, "--seed", seed])
                    for name, seed in (("first", "3"), ("again", "3"), ("other", "4"))
                )
    finally:
        torch.set_num_threads(threads)
    assert first.metrics == again.metrics
    weights, repeated = first.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(weights[key], repeated[key]) for key in weights)
    changed = other.model.state_dict()
    assert not all(torch.equal(weights[key], changed[key]) for key in weights)
