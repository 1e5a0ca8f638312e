"""python -m training.classify against a real MLflow server: logging, registry, fine-tune chain."""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from models.classify import build_model
from shared.cache import FetchedModel
from shared.media import ImageSpec
from shared.registry import RegistryClient
from tests.procs import run_module
from training.classify import main
from training.data import load_splits, load_test_set, split_hash

pytestmark = pytest.mark.integration

PARENT, CHILD = "digits04-torch", "digits59-torch"
DENSE = "digits-densenet-torch"
# A small DenseNet-BC with a compression torchvision cannot build (0.75, not 0.5).
DENSE_FLAGS = ["--arch", "densenet", "--growth-rate", "8", "--block-config", "2,2"]
DENSE_FLAGS += ["--compression", "0.75", "--image-size", "8", "--epochs", "5", "--lr", "0.01"]
# A trained model must clear the majority-class baseline by this much on held-out digits; a
# model that learned nothing predicts (at best) the majority class, about 10% here.
MARGIN = 0.4


def majority_baseline() -> float:
    """Test accuracy of always answering the most frequent training digit."""
    splits = load_splits()
    majority = np.bincount(splits["train"].labels).argmax()
    return float(np.mean(splits["test"].labels == majority))


@dataclass(frozen=True)
class Runs:
    tracking_uri: str
    workdir: Path
    default_log: str
    child_log: str

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def fetch(self, uri: str) -> FetchedModel:
        return RegistryClient(self.tracking_uri).fetch(uri, self.workdir / "fetched")


@pytest.fixture(scope="module")
def runs(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """A default --quick run, a 0-4 model fine-tuned into a 5-9 model with a frozen backbone,
    and a DenseNet with compression 0.75.

    The default run is the real command line in a subprocess; the chain calls `main()` in this
    process, which saves the two interpreter starts (torch and mlflow imports).
    """
    workdir = tmp_path_factory.mktemp("training-classify")
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    default_log = run_module("training.classify", "--quick", env=env, log=workdir / "default.log")
    cache = ["--cache-dir", str(workdir / "cache")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        assert main(["--quick", "--classes", "0,1,2,3,4", "--model-name", PARENT, *cache]) == 0
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            code = main(
                [
                    "--quick",
                    "--classes",
                    "5,6,7,8,9",
                    "--model-name",
                    CHILD,
                    *cache,
                    "--init-from",
                    f"models:/{PARENT}@candidate",
                    "--freeze-backbone",
                ]
            )
        assert code == 0, output.getvalue()
        assert main(["--quick", *DENSE_FLAGS, "--model-name", DENSE, *cache]) == 0
    return Runs(mlflow_server, workdir, default_log, output.getvalue())


def test_quick_run_prints_progress_and_the_registered_version(runs: Runs) -> None:
    assert re.search(r"epoch 1/2 .* val loss [\d.]+ acc [\d.]+%", runs.default_log)
    assert "epoch 2/2" in runs.default_log
    match = re.search(
        r"registered classify-torch version (\d+) @candidate: test accuracy", runs.default_log
    )
    assert match, runs.default_log[-2000:]
    version = runs.client().get_model_version_by_alias("classify-torch", "candidate").version
    assert version == match[1]


def test_quick_run_logs_params_metrics_history_and_plots(runs: Runs) -> None:
    client = runs.client()
    run = client.get_run(client.get_model_version_by_alias("classify-torch", "candidate").run_id)
    metrics, params = run.data.metrics, run.data.params
    baseline = majority_baseline()
    assert metrics["test_majority_accuracy"] == pytest.approx(baseline)
    assert metrics["test_accuracy"] >= baseline + MARGIN, (metrics["test_accuracy"], baseline)
    assert metrics["test_macro_f1"] >= MARGIN
    for digit in range(10):
        for kind in ("precision", "recall", "f1"):
            assert f"test_{kind}_{digit}" in metrics
    assert metrics["parameter_count"] > 11_000_000
    assert metrics["flops_per_image"] > 1e6
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [1, 2]
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    assert params["split_hash"] == split_hash(load_splits())
    assert params["architecture.name"] == "resnet18"
    assert params["epochs"] == "2" and params["quick"] == "True"
    assert params["git_commit"]
    plots = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"confusion_matrix.png", "learning_curve.png"}
    local = client.download_artifacts(
        run.info.run_id, "plots/learning_curve.png", str(runs.workdir)
    )
    assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_registered_bundle_verifies_and_reproduces_the_logged_test_accuracy(runs: Runs) -> None:
    fetched = runs.fetch("models:/classify-torch@candidate")
    manifest = fetched.bundle.manifest
    assert manifest["task"] == "classify" and manifest["name"] == "classify-torch"
    assert manifest["variants"]["torch"]["format"] == "safetensors"
    assert manifest["inputs"] == [{"name": "input", "dtype": "float32", "shape": [-1, 3, 16, 16]}]
    assert manifest["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}]
    assert manifest["labels"] == [str(d) for d in range(10)]
    assert manifest["source"]["run_id"] == fetched.run_id
    assert manifest["source"]["split_hash"] == split_hash(load_splits())
    model = build_model(manifest["architecture"])
    model.load_state_dict(load_file(fetched.bundle.variant_file("torch")))
    spec = ImageSpec.from_manifest(fetched.bundle.preprocessing)
    test = load_test_set(spec, fetched.bundle.preprocessing["classes"])
    with torch.no_grad():
        predicted = model.eval()(torch.from_numpy(test.inputs)).argmax(1).numpy()
    accuracy = float(np.mean(predicted == test.labels))
    logged = runs.client().get_run(fetched.run_id).data.metrics["test_accuracy"]
    assert accuracy == pytest.approx(logged, abs=1e-9)
    assert manifest["metrics"]["test_accuracy"] == pytest.approx(logged, abs=1e-9)


def test_fine_tune_chain_links_runs_and_keeps_the_frozen_backbone(runs: Runs) -> None:
    client = runs.client()
    parent_version = client.get_model_version_by_alias(PARENT, "candidate")
    child_version = client.get_model_version_by_alias(CHILD, "candidate")
    tags = client.get_run(child_version.run_id).data.tags
    assert tags["modelplane.parent_run_id"] == parent_version.run_id
    assert tags["modelplane.init_from"] == f"models:/{PARENT}@candidate"
    assert f"initializing from models:/{PARENT}@candidate" in runs.child_log

    parent, child = (
        runs.fetch(f"models:/{PARENT}@candidate"),
        runs.fetch(f"models:/{CHILD}@candidate"),
    )
    assert parent.bundle.labels == ["0", "1", "2", "3", "4"]
    assert child.bundle.labels == ["5", "6", "7", "8", "9"]
    assert child.bundle.manifest["architecture"] == parent.bundle.manifest["architecture"]
    parent_weights = load_file(parent.bundle.variant_file("torch"))
    child_weights = load_file(child.bundle.variant_file("torch"))
    assert parent_weights.keys() == child_weights.keys()
    for key, value in parent_weights.items():
        if key.startswith("fc."):
            assert not torch.equal(child_weights[key], value), key
        else:  # the frozen backbone, BatchNorm statistics included, is the parent's exactly
            assert torch.equal(child_weights[key], value), key


def test_densenet_flags_shape_the_registered_net_and_it_loads_back(runs: Runs) -> None:
    from models.classify import load_torch_bundle

    fetched = runs.fetch(f"models:/{DENSE}@candidate")
    architecture = fetched.bundle.manifest["architecture"]
    assert architecture["name"] == "densenet" and architecture["compression"] == 0.75
    assert (architecture["growth_rate"], architecture["block_config"]) == (8, [2, 2])
    model = load_torch_bundle(fetched.bundle)  # the path the explain service takes
    conv = model.features.transition1.conv
    assert (conv.in_channels, conv.out_channels) == (24 + 2 * 8, int(40 * 0.75))
    spec = ImageSpec.from_manifest(fetched.bundle.preprocessing)
    test = load_test_set(spec)
    with torch.no_grad():
        accuracy = float(
            np.mean(model(torch.from_numpy(test.inputs)).argmax(1).numpy() == test.labels)
        )
    assert accuracy == pytest.approx(fetched.bundle.manifest["metrics"]["test_accuracy"], abs=1e-9)
    assert accuracy >= majority_baseline() + MARGIN, accuracy
