"""training.text: the device choice, when fp16 needs a grad scaler, bucketed batches, smoothing."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tests.procs import ROOT
from tests.unit.test_text_attention import tiny_seq2seq
from training.text import parse_args
from training.text_device import DeviceError, pick_device, use_grad_scaler
from training.text_tasks import Generate, bucketed_chunks, chunks


@pytest.mark.parametrize(
    ("choice", "cuda", "expected"),
    [("auto", False, "cpu"), ("auto", True, "cuda"), ("cpu", True, "cpu"), ("cuda", True, "cuda")],
)
def test_pick_device_prefers_cuda_only_when_there_is_one(
    choice: str, cuda: bool, expected: str
) -> None:
    assert pick_device(choice, cuda_available=cuda) == torch.device(expected)


def test_pick_device_refuses_cuda_without_cuda() -> None:
    with pytest.raises(DeviceError, match="no CUDA device"):
        pick_device("cuda", cuda_available=False)


@pytest.mark.parametrize(
    ("amp", "device", "scaled"),
    [(True, "cuda", True), (False, "cuda", False), (True, "cpu", False), (False, "cpu", False)],
)
def test_grad_scaler_only_for_fp16_autocast_on_cuda(amp: bool, device: str, scaled: bool) -> None:
    assert use_grad_scaler(amp, device) is scaled


def test_device_cuda_without_cuda_is_a_clear_error_exit_not_a_traceback() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
    cmd = [
        sys.executable,
        "-m",
        "training.text",
        "--task",
        "generate",
        "--quick",
        "--device",
        "cuda",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--device cuda: no CUDA device" in done.stderr
    assert "Traceback" not in done.stderr


def test_generate_defaults_differ_between_quick_and_full_runs() -> None:
    quick = parse_args(["--task", "generate", "--quick"])
    full = parse_args(["--task", "generate"])
    assert quick.extra_packages == "" and full.extra_packages  # quick stays seconds
    assert full.device == "auto" and full.label_smoothing > 0
    classify = parse_args(["--task", "classify"])
    assert classify.label_smoothing == 0.0 and classify.no_repeat_ngram == 0


def test_bucketed_batches_cover_every_example_once_with_less_padding() -> None:
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 128, (1000,), generator=generator).tolist()
    bucketed = list(bucketed_chunks(lengths, 16, seed=1, pool=8))
    assert sorted(i for batch in bucketed for i in batch) == list(range(1000))
    assert all(len(batch) <= 16 for batch in bucketed)

    def padding(batches: list[list[int]]) -> int:
        return sum(
            max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches
        )

    assert padding(bucketed) < padding(list(chunks(1000, 16, seed=1))) / 3
    assert bucketed == list(bucketed_chunks(lengths, 16, seed=1, pool=8))
    assert bucketed != list(bucketed_chunks(lengths, 16, seed=2, pool=8))  # a new epoch


def test_label_smoothing_shapes_the_training_loss_but_not_the_validation_loss() -> None:
    model, task = tiny_seq2seq(), Generate()  # dropout 0: train and eval differ only by smoothing
    task.label_smoothing = 0.1
    src, tgt = torch.tensor([[5, 9, 12, 7]]), torch.tensor([[1, 8, 14, 22, 2]])
    plain = F.cross_entropy(model(src, tgt[:, :-1]).flatten(0, 1), tgt[:, 1:].flatten())
    with torch.no_grad():
        assert task.loss(model.eval(), (src, tgt), 0.0) == pytest.approx(float(plain), rel=1e-5)
        assert task.loss(model.train(), (src, tgt), 0.0) != pytest.approx(float(plain), rel=1e-3)


def test_k_accumulated_batches_give_the_gradient_of_one_batch_k_times_larger() -> None:
    from models.text import TextClassifier, TextConfig
    from training.text import accumulate
    from training.text_tasks import Classify

    torch.manual_seed(0)
    config = TextConfig("classifier", vocab_size=50, d_model=16, heads=2, layers=2, d_ff=32,
                        dropout=0.0, num_classes=4)  # fmt: skip
    model, task = TextClassifier(config).train(), Classify()
    ids = torch.randint(4, 50, (32, 9), generator=torch.Generator().manual_seed(1))
    ids[::3, 6:] = 0  # padding too
    labels = torch.arange(32) % 4
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def gradients(parts: int) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        args = argparse.Namespace(accum_steps=parts, amp=False)
        for chunk in zip(ids.chunk(parts), labels.chunk(parts), strict=True):
            accumulate(model, task, chunk, 0.0, args, scaler)
        return [p.grad.clone() for p in model.parameters()]

    whole, accumulated = gradients(1), gradients(4)
    for a, b in zip(whole, accumulated, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)  # float32 summation order only
    assert max(float(g.abs().max()) for g in whole) > 1e-3  # gradients that could differ
