"""Resumable fine-tuning: an interrupted run resumes to exactly the uninterrupted result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from training import data as digits
from training.export.finetune import FineTune, TrainData, fine_tune, recalibrate_batchnorm

SPEC = digits.image_spec(8, 1)


class Interrupted(Exception):
    """Stands in for a killed process."""


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


@pytest.fixture(scope="module")
def train_data() -> TrainData:
    split = digits.stratified_subset(digits.load_splits()["train"], 64)
    inputs = digits.preprocess(split.images, SPEC)
    return TrainData(inputs, split.labels, digits.train_augmentation(SPEC))


def run(model: nn.Module, data: TrainData, checkpoints: Path | None, **kwargs) -> list[str]:
    said: list[str] = []
    fine_tune(
        model,
        data,
        FineTune(epochs=3, lr=1e-2, batch_size=32, seed=1),
        checkpoint_dir=checkpoints,
        fingerprint=kwargs.pop("fingerprint", "source-a"),
        say=said.append,
        label="recovery",
        **kwargs,
    )
    return said


def stop_after_two(epoch: int) -> None:
    if epoch == 2:
        raise Interrupted


def test_interrupted_fine_tuning_resumes_to_the_uninterrupted_weights(
    train_data: TrainData, tmp_path: Path
) -> None:
    reference = tiny_net()
    run(reference, train_data, None)

    resumed = tiny_net()
    with pytest.raises(Interrupted):
        run(resumed, train_data, tmp_path, on_epoch_end=stop_after_two)
    said = run(tiny_net(), train_data, tmp_path)  # a fresh process: a fresh net, same dir
    assert said[0] == f"recovery: resuming after epoch 2/3 from {tmp_path}"
    assert [line.split(" loss")[0] for line in said[1:]] == ["recovery: epoch 3/3"]

    final = tiny_net()
    run(final, train_data, tmp_path)  # everything done: loads the last checkpoint, trains nothing
    for (name, want), got in zip(
        reference.state_dict().items(), final.state_dict().values(), strict=True
    ):
        assert torch.equal(want, got), name


def test_checkpoint_of_another_source_is_not_resumed(train_data: TrainData, tmp_path: Path) -> None:
    plain = TrainData(train_data.inputs, train_data.labels)
    run(tiny_net(), plain, tmp_path)
    said = run(tiny_net(), plain, tmp_path, fingerprint="source-b")
    assert not any("resuming" in line for line in said)
    assert len(said) == 3


def test_batchnorm_recalibration_averages_the_statistics_of_the_inputs() -> None:
    rng = np.random.default_rng(0)
    inputs = rng.normal(3.0, 2.0, size=(96, 1, 8, 8)).astype(np.float32)
    net = nn.Sequential(nn.BatchNorm2d(1), nn.Flatten())
    recalibrate_batchnorm(net, inputs, batch_size=32)
    norm = net[0]
    assert norm.running_mean.item() == pytest.approx(float(inputs.mean()), abs=1e-4)
    assert norm.momentum == 0.1 and not net.training
