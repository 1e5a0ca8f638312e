"""Structured (torch-pruning) and unstructured (torch.nn.utils.prune) pruning of classify nets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from models.classify import architecture_config, build_model
from tests.tinycnn import small_cnn
from training.export import prune
from training.export.onnx import export_onnx, with_weights
from training.tracking import parameter_count

EXAMPLE = torch.randn(2, 3, 8, 8)


def resnet() -> nn.Module:
    torch.manual_seed(0)
    return build_model(architecture_config("resnet18", 10)).eval()


def test_half_the_channels_leave_a_quarter_of_the_resnet18_parameters() -> None:
    model = resnet()
    before = parameter_count(model)
    pruned = prune.prune_channels(model, 0.5, EXAMPLE)
    # a conv's weights scale with in x out channels: (1 - 0.5)^2 of them remain
    assert parameter_count(pruned) / before == pytest.approx(0.25, abs=0.01)
    assert (pruned.conv1.out_channels, pruned.layer4[1].conv2.out_channels) == (32, 256)
    assert pruned.fc.out_features == 10  # the head keeps one output per label
    # residual adds stay consistent: each block's output matches its shortcut's channels
    assert pruned.layer2[0].conv2.out_channels == pruned.layer2[0].downsample[0].out_channels
    assert pruned(EXAMPLE).shape == (2, 10)


def test_channel_pruning_keeps_densenet_concatenations_consistent() -> None:
    torch.manual_seed(0)
    model = build_model(architecture_config("densenet", 10, block_config=[2, 2])).eval()
    before = parameter_count(model)
    pruned = prune.prune_channels(model, 0.3, EXAMPLE)
    assert parameter_count(pruned) < 0.7 * before
    assert pruned(EXAMPLE).shape == (2, 10)


def test_channel_pruning_rejects_a_ratio_outside_zero_to_one() -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        prune.prune_channels(resnet(), 1.0, EXAMPLE)


def test_iterative_magnitude_pruning_keeps_earlier_zeros_and_reaches_each_sparsity() -> None:
    model = small_cnn(16)
    prune.prune_magnitude(model, 0.5)
    with pytest.raises(ValueError, match="remove_masks"):
        prune.prune_magnitude(model, 0.7)
    prune.remove_masks(model)
    first = {n: p.detach() == 0 for n, p in model.named_parameters() if n.endswith("weight")}
    assert prune.sparsity(model) == pytest.approx(0.5, abs=1e-3)
    prune.prune_magnitude(model, 0.9)
    prune.remove_masks(model)
    assert prune.sparsity(model) == pytest.approx(0.9, abs=1e-3)
    params = dict(model.named_parameters())
    for name, zero in first.items():
        assert bool((params[name].detach()[zero] == 0).all()), name
    assert not any(name.endswith("_orig") for name in params)  # plain tensors, exportable


def test_sparse_weights_swapped_into_the_export_reproduce_the_pruned_net(tmp_path: Path) -> None:
    model = small_cnn(16)
    raw = tmp_path / "raw.onnx"
    export_onnx(model, EXAMPLE, raw, 18, optimize=False)
    prune.prune_magnitude(model, 0.7)
    prune.remove_masks(model)
    swapped = tmp_path / "sparse.onnx"
    assert with_weights(raw, swapped, model.state_dict()) > 0
    session = ort.InferenceSession(str(swapped), providers=["CPUExecutionProvider"])
    inputs = np.random.default_rng(0).normal(size=(4, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs)).numpy()
    got = session.run(None, {"input": inputs})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert raw.stat().st_size == pytest.approx(swapped.stat().st_size, rel=0.01)  # zeros stored
