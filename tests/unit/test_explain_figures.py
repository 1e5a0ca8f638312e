"""The explain report's model views on the tiny region model (tests/tinyexplain.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.tinyexplain import one_torch_thread, prep, synthetic, trained_region_model
from training import explain_figures as figures


def test_embeddings_separate_the_classes_better_than_raw_pixels(tmp_path: Path) -> None:
    images, labels = synthetic(120, 7)
    with one_torch_thread():
        result = figures.projections(trained_region_model(), prep(images).numpy(), labels, tmp_path)
    assert result["points"] == 120
    # the trained features pull the classes apart; raw pixels (distractors everywhere) do not
    assert result["silhouette_embedding"] > result["silhouette_pixels"] + 0.1, result
    assert result["silhouette_tsne"] > result["silhouette_pixels"], result
    assert 0 < result["pca_explained_variance"] <= 1
    with Image.open(tmp_path / "embeddings.png") as image:
        assert image.size[0] > 500


def test_activation_histograms_report_each_layers_distribution(tmp_path: Path) -> None:
    model = trained_region_model()
    inputs = prep(synthetic(16, 8)[0]).numpy()
    layers = ["features.norm0", "features.denseblock2"]
    with one_torch_thread():
        stats = figures.activation_histograms(model, layers, inputs, tmp_path)
        with torch.no_grad():
            stem = model.features.norm0(model.features.conv0(torch.from_numpy(inputs)))
    assert list(stats) == layers
    assert np.isclose(stats["features.norm0"]["mean"], float(stem.mean()), atol=1e-5)
    assert np.isclose(
        stats["features.norm0"]["share_at_or_below_zero"], float((stem <= 0).float().mean())
    )
    with Image.open(tmp_path / "activations.png") as image:
        assert image.size[0] > 300
    assert figures.filters(model, tmp_path) == {"layer": "features.conv0", "shape": [8, 1, 3, 3]}
    assert (tmp_path / "filters.png").is_file()
