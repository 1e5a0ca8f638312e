"""Text data and tokenizer: deterministic splits, unseen test modules, BPE round trip."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from training import text_data
from training.models.text import SPECIAL_TOKENS


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
