"""CAM on a GAP network, and how Grad-CAM's default layer is chosen (models.fidelity)."""

from __future__ import annotations

import pytest
import torch

from models.attribution import Explainer
from models.fidelity import LayerScore, best_layer
from tests.tinyexplain import SPEC, one_torch_thread, positives, prep, trained_region_model


def test_cam_averages_to_the_logit_minus_the_bias_for_every_class() -> None:
    model = trained_region_model()
    explainer = Explainer.build(model, SPEC)
    x = prep(positives(3))
    with one_torch_thread(), torch.no_grad():
        logits = model(x)
        for target in range(logits.shape[1]):
            cam = explainer.class_activation(x, target)
            assert cam.shape == (3, 1, 8, 8)  # the last dense block's resolution
            pooled = cam.mean(dim=(1, 2, 3)) + model.classifier.bias[target]
            torch.testing.assert_close(pooled, logits[:, target], atol=1e-4, rtol=1e-4)


def test_cam_refuses_a_network_without_a_gap_head() -> None:
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten())
    explainer = Explainer.build(plain, SPEC)
    with pytest.raises(ValueError, match="GAP \\+ linear head"):
        explainer.class_activation(torch.zeros(1, 1, 16, 16), 0)


def score(layer: str, side: int, deletion: float, insertion: float) -> LayerScore:
    return LayerScore(layer, (side, side), deletion, insertion)


def test_best_layer_is_the_most_faithful_spatial_map() -> None:
    scores = [
        score("layer1", 16, 0.40, 0.60),
        score("layer2", 8, 0.30, 0.70),  # insertion - deletion 0.40: the best spatial map
        score("layer3", 4, 0.35, 0.65),
        score("layer4", 1, 0.10, 0.90),  # better still, but 1x1 says nothing spatial
    ]
    assert best_layer(scores) == "layer2"
    tie = [score("layer2", 8, 0.3, 0.7), score("layer3", 4, 0.3, 0.7)]
    assert best_layer(tie) == "layer2"  # equal fidelity: the finer map
    assert best_layer([score("layer4", 1, 0.1, 0.9)]) == "layer4"  # nothing spatial at all
