"""Fidelity and sparsity figures, and the cost bounds, on hand-made maps and a linear net."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.attribution import Explainer, evaluations, occlusion_windows, to_map
from models.fidelity import (
    DELETION_STEPS,
    auc,
    deletion_insertion,
    gini,
    top_mass,
)
from models.methods import MethodParams
from shared.media import ImageSpec

SPEC = ImageSpec(4, 4, 1, (0.0,), (1.0,))  # black is 0.0 in model space


def linear_explainer() -> tuple[Explainer, torch.Tensor]:
    """Logit 1 = 10 x (sum of the top row) - 5: only the top row carries evidence for class 1."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[1, :4] = 10.0
        model[1].bias.copy_(torch.tensor([0.0, -5.0]))
    return Explainer.build(model, SPEC), torch.ones(1, 1, 4, 4)


def test_gini_is_zero_for_a_uniform_map_and_near_one_for_a_single_pixel() -> None:
    assert gini(np.ones((8, 8))) == pytest.approx(0.0)
    one_hot = np.zeros((8, 8))
    one_hot[3, 4] = -2.0  # magnitude counts, not sign
    assert gini(one_hot) == pytest.approx(1 - 1 / 64)
    assert gini(np.zeros((8, 8))) == 0.0


def test_top_mass_is_the_share_of_the_top_tenth() -> None:
    values = np.zeros(100)
    values[:10] = 1.0
    values[10:] = 1.0 / 90
    assert top_mass(values.reshape(10, 10)) == pytest.approx(10 / 11)
    assert top_mass(np.ones((10, 10))) == pytest.approx(0.1)


def test_auc_of_a_constant_and_a_linear_curve() -> None:
    assert auc(np.full(17, 0.8)) == pytest.approx(0.8)
    assert auc(np.linspace(1, 0, 17)) == pytest.approx(0.5)


def test_deletion_of_the_evidence_drops_the_probability_first() -> None:
    explainer, x = linear_explainer()
    faithful = np.zeros((4, 4), np.float32)
    faithful[0] = 1.0  # the top row is the evidence
    backwards = -faithful  # the evidence ranked last
    deletion, insertion = deletion_insertion(explainer, x, faithful, target=1)
    late, _ = deletion_insertion(explainer, x, backwards, target=1)
    assert len(deletion) == DELETION_STEPS + 1
    assert deletion[0] == pytest.approx(float(torch.sigmoid(torch.tensor(35.0))), abs=1e-6)
    assert deletion[-1] == pytest.approx(float(torch.sigmoid(torch.tensor(-5.0))), abs=1e-6)
    assert insertion[0] == pytest.approx(deletion[-1]) and insertion[-1] == pytest.approx(
        deletion[0]
    )
    assert auc(deletion) < auc(late)


def test_saliency_of_a_linear_net_is_its_weights() -> None:
    explainer, x = linear_explainer()
    saliency = to_map(explainer.attribute(x, 1, "saliency", MethodParams()))
    expected = np.zeros((4, 4), np.float32)
    expected[0] = 1.0
    np.testing.assert_allclose(saliency, expected, atol=1e-6)


def test_integrated_gradients_from_black_sum_to_the_logit_change() -> None:
    explainer, x = linear_explainer()
    raw = explainer.attribute(x, 1, "integrated_gradients", MethodParams(steps=16))
    assert float(raw.sum()) == pytest.approx(40.0, rel=1e-4)  # f(x) - f(black) for logit 1


def test_occlusion_windows_and_request_costs() -> None:
    assert occlusion_windows(32, 32, 4, 2) == 15 * 15
    assert occlusion_windows(16, 16, 3, 2) == 8 * 8  # the last window is clipped, not dropped
    spec = ImageSpec(32, 32, 3, (0.5,) * 3, (0.5,) * 3)
    assert evaluations("integrated_gradients", MethodParams(steps=200), spec) == 200
    smooth_ig = MethodParams(samples=8, base="integrated_gradients", steps=64)
    assert evaluations("smoothgrad", smooth_ig, spec) == 512
    assert evaluations("saliency", MethodParams(), spec) == 1
