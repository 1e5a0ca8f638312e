"""Text service and metric helpers: input checks, ROUGE-L, sampling filters, the attention PNG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.attention_map import attention_png
from models.decoding import filter_logits
from services.text.tokens import check_text
from shared.errors import InvalidInputError
from shared.requests import lone_surrogate_path
from training.text_eval import generation_scores, rouge_l


@pytest.mark.parametrize(
    ("text", "mentions"),
    [("", "is empty"), ("   \n", "is empty"), ("x" * 11, "limit is 10"), ("a\ud800", "surrogate")],
)
def test_check_text_refuses_with_a_clear_message(text: str, mentions: str) -> None:
    with pytest.raises(InvalidInputError, match=mentions):
        check_text(text, "texts[0]", max_chars=10)


def test_check_text_accepts_any_valid_unicode() -> None:
    check_text("Grüße, 日本 🙂", "text", max_chars=100)


def test_surrogates_are_found_anywhere_in_the_body() -> None:
    assert lone_surrogate_path({"texts": ["ok", "bad\udc00"]}, "body") == "body.texts[1]"
    assert lone_surrogate_path({"texts": ["ok"], "top_k": 3}, "body") is None


def test_rouge_l_is_the_lcs_f1_of_words() -> None:
    assert rouge_l("return the sum", "Return the sum") == 1.0
    assert rouge_l("a b c d", "a x c y") == pytest.approx(0.5)
    assert rouge_l("", "a") == 0.0


def test_generation_scores_reward_the_right_summary() -> None:
    refs = ["Return the sum of two numbers.", "Split a path into head and tail."]
    good = generation_scores(refs, refs)
    bad = generation_scores(["add", "split"], refs)
    assert good["bleu"] > 99 and good["rouge_l"] > 99 and good["chrf"] > 99
    assert bad["bleu"] < good["bleu"] and bad["rouge_l"] < good["rouge_l"]


def test_top_k_and_top_p_filters_keep_the_likeliest_tokens() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept_k = torch.isfinite(filter_logits(logits, top_k=2, top_p=1.0))
    assert kept_k.tolist() == [True, True, False, False]
    kept_p = torch.isfinite(filter_logits(logits, top_k=0, top_p=0.7))
    assert kept_p.tolist() == [True, True, False, False]
    assert torch.isfinite(filter_logits(logits, top_k=0, top_p=0.01)).sum() == 1
    # a top_p that underflows float32 still keeps the likeliest token (sampling stays finite)
    tiny = filter_logits(logits, top_k=0, top_p=5e-324)
    assert torch.isfinite(tiny).tolist() == [True, False, False, False]


def test_attention_png_has_one_cell_per_token_pair() -> None:
    import io

    weights = np.eye(3, dtype=np.float32)
    png = attention_png(weights, ["a", "b", "c"], ["a", "b", "c"])
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.width == image.height > 3 * 18
