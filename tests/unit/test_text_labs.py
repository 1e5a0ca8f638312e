"""The pieces the transformer studies stand on: norm variants, head gates, entropy, metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.attention import EncoderBlock
from models.attention_map import head_entropy
from models.text import TextClassifier, TextConfig
from training.studies.attention import attention_cost, exponent, head_gates
from training.studies.decoding import free_running_accuracy
from training.text_eval import classify_baselines, distinct_n

torch.set_num_threads(1)
IDS = torch.tensor([[5, 9, 12, 7, 30, 0], [8, 4, 22, 0, 0, 0]])


def classifier(**changes: object) -> TextClassifier:
    torch.manual_seed(0)
    config = TextConfig("classifier", vocab_size=40, d_model=16, heads=2, layers=2, d_ff=32,
                        dropout=0.0, num_classes=3, **changes)  # fmt: skip
    return TextClassifier(config).eval()


def test_the_shipped_pre_ln_layout_keeps_its_weight_names() -> None:
    # bundles trained before the norm options load unchanged
    keys = set(classifier().state_dict())
    assert {"encoder.blocks.0.norm1.weight", "encoder.blocks.1.norm2.bias"} <= keys
    assert "encoder.norm.weight" in keys


@pytest.mark.parametrize(("norm", "pre_norm"), [("layer", False), ("batch", True), ("rms", True)])
def test_norm_variants_build_and_ignore_padding(norm: str, pre_norm: bool) -> None:
    model = classifier(norm=norm, pre_norm=pre_norm)
    logits = model(IDS)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    assert torch.allclose(model(IDS[:, :5]), logits, atol=1e-5)  # one more pad changes nothing


def test_post_ln_block_normalizes_its_output() -> None:
    torch.manual_seed(0)
    block = EncoderBlock(16, 2, 32, 0.0, pre_norm=False)
    out, _ = block(torch.randn(2, 5, 16) * 10, None)
    assert torch.allclose(out.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(out.std(-1, unbiased=False), torch.ones(2, 5), atol=1e-3)


def test_open_head_gates_change_nothing_and_a_closed_head_changes_the_logits() -> None:
    model = classifier()
    plain = model(IDS)
    with head_gates(model, torch.ones(2, 2)):
        assert torch.allclose(model(IDS), plain, atol=1e-6)
    closed = torch.ones(2, 2)
    closed[1, 0] = 0.0
    with head_gates(model, closed):
        assert not torch.allclose(model(IDS), plain, atol=1e-4)
    assert torch.allclose(model(IDS), plain)  # the hooks are gone


def test_gate_gradient_is_the_loss_change_of_scaling_a_head() -> None:
    model, labels = classifier(), torch.tensor([0, 2])
    gates = torch.ones(2, 2, requires_grad=True)
    with head_gates(model, gates):
        F.cross_entropy(model(IDS), labels).backward()
    assert gates.grad is not None
    eps, nudged = 1e-3, torch.ones(2, 2)
    nudged[0, 1] += eps
    with torch.no_grad():
        base = F.cross_entropy(model(IDS), labels)
        with head_gates(model, nudged):
            moved = F.cross_entropy(model(IDS), labels)
    assert float(gates.grad[0, 1]) == pytest.approx(float(moved - base) / eps, rel=0.05, abs=1e-4)


def test_head_entropy_is_zero_for_one_token_and_log_n_for_even_attention() -> None:
    one_hot = np.eye(4)[None]
    even = np.full((1, 4, 4), 0.25)
    assert head_entropy(np.concatenate([one_hot, even])) == pytest.approx([0.0, math.log(4)])


def test_scratch_attention_allocates_quadratically_and_sdpa_does_not() -> None:
    rows = attention_cost((128, 512), heads=2, head_dim=16)
    growth = {k: rows[1][f"{k}_mib"] / rows[0][f"{k}_mib"] for k in ("scratch", "sdpa")}
    assert growth["scratch"] > 12  # the (n x n) scores: 16x for 4x the length
    assert growth["sdpa"] < 8  # measured ~6: no n x n matrix is kept
    assert exponent([{"length": n, "t": n**2.0} for n in (8, 16, 32, 64)], "t") == pytest.approx(2)


def test_distinct_n_counts_unique_word_ngrams() -> None:
    assert distinct_n(["a b a b"], 1) == 0.5
    assert distinct_n(["a b", "a b"], 2) == 0.5
    assert distinct_n(["a"], 2) == 0.0


def test_free_running_accuracy_compares_positions_including_eos() -> None:
    assert free_running_accuracy([7, 8], [1, 7, 8, 2]) == 1.0
    assert free_running_accuracy([8, 7], [1, 7, 8, 2]) == pytest.approx(1 / 3)


def test_baselines_are_the_majority_share_and_a_char_ngram_model() -> None:
    train = (["der die das"] * 3 + ["le la les"] * 2, [0, 0, 0, 1, 1])
    test = (["das die", "les la"], [0, 1])
    scores = classify_baselines(train, test)
    assert scores["baseline_majority_accuracy"] == 0.5
    assert scores["baseline_char_ngram_accuracy"] == 1.0
