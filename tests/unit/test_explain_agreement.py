"""models.agreement: occlusion maps of fp32 vs a variant and their rank correlation."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from models.agreement import attribution_agreement, occlusion_maps, onnx_predict, torch_predict
from models.attribution import black_input
from tests.tinyexplain import (
    SPEC,
    add_fp32_export,
    one_torch_thread,
    positives,
    prep,
    trained_region_model,
)

FILL = black_input(SPEC)[0, :, 0, 0].numpy()


@pytest.fixture(scope="module")
def held_out() -> np.ndarray:
    return prep(positives(6)).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained model's own fp32 ONNX export, run by onnxruntime (what a variant is)."""
    from tests.tinyexplain import write_region_bundle

    directory = tmp_path_factory.mktemp("agreement")
    write_region_bundle(directory)
    add_fp32_export(directory, with_outputs=False)
    return directory / "model.onnx"


def shuffled(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The same architecture with every weight tensor's values permuted: the same weight
    distribution, none of what was learned."""
    twin = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in twin.parameters():
            flat = param.flatten()
            param.copy_(flat[torch.randperm(len(flat), generator=generator)].view_as(param))
    return twin.eval()


def test_occlusion_points_at_the_deciding_region(held_out: np.ndarray) -> None:
    with one_torch_thread():
        maps = occlusion_maps(
            torch_predict(trained_region_model()), held_out, np.ones(len(held_out), int), fill=FILL
        )
    assert maps.shape == (len(held_out), 16, 16)
    # class 1 is a square in the top-left quadrant: most of the positive mass lies there
    positive = np.clip(maps, 0, None)
    share = positive[:, :8, :8].sum((1, 2)) / positive.sum((1, 2))
    assert share.mean() > 0.5, share


def test_the_onnx_export_agrees_with_fp32_and_shuffled_weights_do_not(
    held_out: np.ndarray, exported: Path
) -> None:
    model = trained_region_model()
    with one_torch_thread():
        same = attribution_agreement(
            torch_predict(model), onnx_predict(exported), held_out, fill=FILL
        )
        # occlusion maps of any network follow where the ink is, so one unrelated network can
        # correlate by chance (either sign): compare with several
        others = [
            attribution_agreement(
                torch_predict(model), torch_predict(shuffled(model, seed)), held_out, fill=FILL
            ).mean
            for seed in range(6)
        ]
    assert same.same_prediction == 1.0
    assert same.mean > 0.99 and min(same.per_image) > 0.98, same
    assert np.mean(others) < 0.5 and max(others) < 0.95, others
    assert same.to_dict()["images"] == len(held_out)


def rounded(model: torch.nn.Module, bits: int) -> torch.nn.Module:
    """Weights rounded to `bits`-bit symmetric levels per tensor (fake quantization)."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for param in twin.parameters():
            scale = param.abs().max() / (2 ** (bits - 1) - 1)
            if scale > 0:
                param.copy_((param / scale).round() * scale)
    return twin.eval()


def test_agreement_falls_as_the_weights_get_coarser(held_out: np.ndarray) -> None:
    model = trained_region_model()
    with one_torch_thread():
        fine, coarse = (
            attribution_agreement(
                torch_predict(model), torch_predict(rounded(model, bits)), held_out, fill=FILL
            ).mean
            for bits in (8, 3)
        )
    assert fine > 0.99 and 0.8 < coarse < fine, (fine, coarse)


def test_agreement_refuses_an_empty_batch() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        attribution_agreement(lambda x: x, lambda x: x, np.zeros((0, 1, 4, 4), np.float32))
