"""Decoding rules both engines share (PyTorch, ONNX): no repeated n-grams, the model's device."""

from __future__ import annotations

import pytest
import torch

from models.decoding import (
    DecodeOptions,
    generate,
    model_device,
    recorded_rules,
    repeated_ngram_tokens,
)
from tests.unit.test_text_attention import tiny_seq2seq

torch.set_num_threads(1)


def ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


@pytest.mark.parametrize(
    ("tokens", "n", "banned"),
    [
        ([5, 6, 7, 5, 6], 3, [7]),  # "5 6" was followed by 7: "5 6 7" again is banned
        ([5, 6, 7, 5, 6], 2, [7]),  # after 6 came 7
        ([5, 6, 5], 2, [6]),
        ([5, 6, 7], 1, [5, 6, 7]),  # unigrams: no token twice
        ([5, 6, 7], 3, []),  # "6 7" has not been seen before
        ([5, 6], 0, []),  # off
        ([5], 3, []),  # too short to repeat anything
    ],
)
def test_repeated_ngram_tokens_are_the_ones_completing_a_seen_ngram(
    tokens: list[int], n: int, banned: list[int]
) -> None:
    assert repeated_ngram_tokens(tokens, n) == banned


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_no_repeat_ngram_decoding_never_repeats_an_ngram(strategy: str) -> None:
    model = tiny_seq2seq()
    src = [5, 9, 12, 7, 3]
    plain = generate(model, src, DecodeOptions(strategy, max_new_tokens=40, stop_at_eos=False))
    assert len(set(ngrams(plain, 2))) < len(ngrams(plain, 2))  # the untrained model repeats
    options = DecodeOptions(strategy, max_new_tokens=40, stop_at_eos=False, no_repeat_ngram=2)
    tokens = generate(model, src, options)
    assert len(tokens) == 40
    assert len(set(ngrams(tokens, 2))) == len(ngrams(tokens, 2))


def test_no_repeat_ngram_gives_the_same_tokens_with_and_without_the_cache() -> None:
    model = tiny_seq2seq()
    options = DecodeOptions(max_new_tokens=30, no_repeat_ngram=3)
    cached = generate(model, [4, 8, 15, 16], options)
    uncached = generate(
        model, [4, 8, 15, 16], DecodeOptions(**{**vars(options), "use_cache": False})
    )
    assert cached == uncached


def test_model_device_is_where_the_weights_are_and_cpu_for_engines_without_any() -> None:
    assert model_device(tiny_seq2seq()) == torch.device("cpu")
    assert model_device(object()) == torch.device("cpu")  # e.g. the onnxruntime engine


def test_recorded_rules_come_from_the_manifest_and_unknown_ones_refuse_the_bundle() -> None:
    assert recorded_rules({"decoding": {"no_repeat_ngram": 3}}) == {"no_repeat_ngram": 3}
    assert recorded_rules({}) == {}  # bundles from before the rule: decode as before
    with pytest.raises(ValueError, match="unknown"):
        recorded_rules({"decoding": {"no_repeat_ngram": 3, "magic": 1}})
