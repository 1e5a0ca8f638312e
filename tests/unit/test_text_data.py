"""Text data and tokenizer: deterministic splits, unseen test modules, BPE round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from models.text import SPECIAL_TOKENS
from models.text_input import RAW_INPUT, code_input
from training import text_data


def test_language_splits_are_deterministic_and_differ_between_splits() -> None:
    first = text_data.language_split("train", 5)
    assert first == text_data.language_split("train", 5)
    test = text_data.language_split("test", 5)
    assert len(set(first.texts) & set(test.texts)) == 0
    assert len(first.label_names) >= 10
    assert sorted(set(first.labels)) == list(range(len(first.label_names)))


def test_code_summaries_come_from_stdlib_functions_split_by_module() -> None:
    splits = text_data.code_splits(limit=20)
    modules = {name: {e.module.split(".")[0] for e in rows} for name, rows in splits.items()}
    assert all(len(rows) == 20 for rows in splits.values())
    assert not modules["train"] & modules["test"]
    example = splits["train"][0]
    assert example.source.startswith(("def ", "async def ", "@"))
    assert example.summary not in example.source  # the docstring was removed from the input


def test_first_sentence_of_a_docstring() -> None:
    doc = "Return the sum of a and b.\n\nMore text. And more."
    assert text_data.first_sentence(doc) == "Return the sum of a and b."
    assert text_data.first_sentence("Split a\n   path name") == "Split a path name"


def test_bpe_tokenizer_round_trips_through_tokenizer_json(tmp_path: Path) -> None:
    texts = text_data.language_split("train", 10).texts
    tokenizer = text_data.train_tokenizer(texts, 400, SPECIAL_TOKENS)
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    loaded = Tokenizer.from_file(str(path))
    assert [loaded.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    for text in [*texts[:20], "def f(x):\n    return x  # ünïcödé 日本語 🙂", "  two  spaces "]:
        ids = loaded.encode(text).ids
        assert ids == tokenizer.encode(text).ids
        assert loaded.decode(ids) == text


def test_code_input_puts_the_name_first_and_splits_identifiers_into_words() -> None:
    source = "def isSubnormal_v2(self, a):\n    return a._convert_other(TarFile)"
    assert code_input(source) == (
        "is subnormal v 2 : def is subnormal v 2 ( self , a ) : "
        "return a . convert other ( tar file )"
    )
    assert code_input("just some words") == "just some words"  # not code: no name


def test_code_input_raw_format_leaves_the_text_alone_and_unknown_formats_fail() -> None:
    source = "def f(x):\n    return x"
    assert code_input(source, RAW_INPUT) == source
    with pytest.raises(ValueError, match="unknown summarizer input format"):
        code_input(source, "pig-latin")


def test_code_input_lets_the_summary_reuse_the_words_of_the_name() -> None:
    """The words of a summary found in the input: split identifiers make far more of them."""
    examples = text_data.code_splits(limit=40)["test"]

    def found(text: str, summary: str) -> int:
        words = set(text.lower().split())
        return sum(w.strip(".,").lower() in words for w in summary.split())

    raw = sum(found(e.source, e.summary) for e in examples)
    words = sum(found(code_input(e.source), e.summary) for e in examples)
    assert words > 1.5 * raw


def test_extra_packages_join_only_the_training_split() -> None:
    plain = text_data.code_splits(limit=5)
    extra = text_data.code_splits(limit=5, extra_packages=["sacrebleu", "not_installed_pkg"])
    assert extra["val"] == plain["val"] and extra["test"] == plain["test"]
    added = extra["train"][5:]
    assert added and all(e.module.startswith("sacrebleu.") for e in added)
    held_out = {(e.name, e.summary) for e in plain["val"] + plain["test"]}
    assert not held_out & {(e.name, e.summary) for e in added}
    assert len({e.source for e in extra["train"]}) == len(extra["train"])
