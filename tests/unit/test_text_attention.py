"""The project's attention against torch's kernels, and the KV cache against full decoding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.attention import (
    MultiHeadAttention,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
    torch_mha_state,
)
from models.decoding import DecodeOptions, generate
from models.text import Seq2Seq, TextClassifier, TextConfig

torch.set_num_threads(1)


def qkv(batch: int = 2, heads: int = 3, queries: int = 5, keys: int = 7, dim: int = 8):
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(batch, heads, n, dim, generator=gen) for n in (queries, keys, keys))


@pytest.mark.parametrize("masked", ["none", "causal", "padding"])
def test_sdpa_matches_torch_scaled_dot_product_attention(masked: str) -> None:
    q, k, v = qkv(queries=7)
    mask = None
    if masked == "causal":
        mask = causal_mask(7)
    elif masked == "padding":
        ids = torch.tensor([[5, 6, 7, 8, 9, 0, 0], [5, 6, 7, 0, 0, 0, 0]])
        mask = padding_mask(ids, 0)
    ours, weights = scaled_dot_product_attention(q, k, v, mask)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:-1]), atol=1e-5)


@pytest.mark.parametrize("masked", ["none", "causal", "padding"])
def test_multi_head_attention_matches_torch_multihead_attention(masked: str) -> None:
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 4).eval()
    theirs = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    theirs.load_state_dict(torch_mha_state(ours))
    x = torch.randn(2, 6, 16)
    ids = torch.tensor([[4, 4, 4, 4, 0, 0], [4, 4, 4, 4, 4, 4]])
    mask = {"none": None, "causal": causal_mask(6), "padding": padding_mask(ids, 0)}[masked]
    out, weights, _ = ours(x, mask=mask)
    kwargs = {}
    if masked == "causal":
        kwargs["attn_mask"] = ~mask  # torch: True = may NOT attend
    elif masked == "padding":
        kwargs["key_padding_mask"] = ids == 0
    expected, expected_weights = theirs(x, x, x, average_attn_weights=False, **kwargs)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(weights, expected_weights, atol=1e-5)


def test_causal_mask_with_cache_lets_new_queries_see_all_earlier_keys() -> None:
    mask = causal_mask(2, 5)
    assert mask.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def tiny_seq2seq(positional: str = "sinusoidal") -> Seq2Seq:
    torch.manual_seed(1)
    config = TextConfig(
        "seq2seq",
        vocab_size=50,
        d_model=16,
        heads=2,
        layers=2,
        decoder_layers=2,
        d_ff=32,
        max_len=64,
        dropout=0.0,
        positional=positional,
    )
    return Seq2Seq(config).eval()


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
def test_incremental_decoding_with_kv_cache_equals_full_decoding(positional: str) -> None:
    model = tiny_seq2seq(positional)
    src = torch.tensor([[5, 9, 12, 7, 3, 0]])
    tgt = torch.tensor([[1, 8, 14, 22, 9, 30]])
    with torch.no_grad():
        memory = model.encode(src)
        full = model.decode(tgt, memory)[0]
        past, steps = None, []
        for t in range(tgt.size(1)):
            logits, past, _ = model.decode(tgt[:, t : t + 1], memory, past)
            steps.append(logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_greedy_tokens_are_the_same_with_and_without_cache() -> None:
    model = tiny_seq2seq()
    src = [5, 9, 12, 7, 3]
    cached = generate(model, src, DecodeOptions(max_new_tokens=20, use_cache=True))
    uncached = generate(model, src, DecodeOptions(max_new_tokens=20, use_cache=False))
    assert cached == uncached and len(cached) > 0


def test_beam_search_with_one_beam_is_greedy() -> None:
    model = tiny_seq2seq()
    for src in ([5, 9, 12], [7, 7, 20, 31, 2]):
        greedy = generate(model, src, DecodeOptions(max_new_tokens=15))
        beam = generate(model, src, DecodeOptions("beam", max_new_tokens=15, num_beams=1))
        assert beam == greedy


def test_sampling_is_reproducible_with_a_seed_and_varies_across_seeds() -> None:
    model = tiny_seq2seq()
    runs = {
        seed: generate(model, [5, 9], DecodeOptions("sample", max_new_tokens=12, seed=seed))
        for seed in (1, 1, 2, 3)
    }
    again = generate(model, [5, 9], DecodeOptions("sample", max_new_tokens=12, seed=1))
    assert runs[1] == again
    assert len({tuple(v) for v in runs.values()}) > 1


def test_classifier_ignores_padding() -> None:
    torch.manual_seed(0)
    config = TextConfig(
        "classifier",
        vocab_size=30,
        d_model=16,
        heads=2,
        layers=2,
        d_ff=32,
        dropout=0.0,
        num_classes=3,
    )
    model = TextClassifier(config).eval()
    ids = torch.tensor([[4, 5, 6]])
    padded = torch.tensor([[4, 5, 6, 0, 0, 0, 0]])
    with torch.no_grad():
        assert torch.allclose(model(ids), model(padded), atol=1e-5)
