"""Drift of the text classifier: the export stores token statistics, scores and logits of the
validation sentences (`text-classifier/1`); held-out test sentences rarely alarm (false-alarm
rate over repeated windows), Python code or one language alone do, within a stated number of
texts; and the text service reports it at GET /v1/model/drift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.text.service import TextService, TextSettings
from shared.app import create_app
from shared.bundle import Bundle, open_bundle
from shared.drift import DriftMonitor, DriftReference, features_of
from shared.onnx import OnnxModel
from tests.procs import poll_until
from tests.unit.conftest import DEAD_REGISTRY, wait_ready
from training import text_data
from training.export.reference import TEXT_PER_LANGUAGE, text_reference

WINDOW = 100
P_VALUE = 0.001
#: stated detection delay: texts after a clean window by which every repetition has alarmed
WITHIN = {"code": 30, "greek only": 40}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tinytext import seed_cache

    directory = tmp_path_factory.mktemp("text-cache")
    seed_cache(directory)
    return directory


@pytest.fixture(scope="module")
def bundle(cache: Path) -> Bundle:
    return open_bundle(cache / "text-classify" / "1")


@pytest.fixture(scope="module")
def reference(bundle: Bundle) -> DriftReference:
    found = DriftReference.from_bundle(bundle, "fp32")
    assert found is not None
    return found


def tokens(bundle: Bundle, texts: list[str]) -> list[list[int]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bundle.file("tokenizer.json")))
    return [encoding.ids for encoding in tokenizer.encode_batch(texts)]


def rows_of(bundle: Bundle, texts: list[str]) -> np.ndarray:
    """The feature rows the service computes for these texts (one text per batch: unpadded)."""
    model = OnnxModel.from_bundle(bundle, "fp32", 1)
    ids = tokens(bundle, texts)
    logits = [model.run({"input": np.array([row], dtype=np.int64)})[0][0] for row in ids]
    return features_of("text-classifier/1", ids, logits)


def held_out_sentences() -> list[str]:
    return text_data.language_split("test", TEXT_PER_LANGUAGE).texts


def code_snippets() -> list[str]:
    """The first lines of stdlib functions (short enough for the model's 256 tokens)."""
    root = text_data.stdlib_root()
    snippets: list[str] = []
    for module in ("textwrap", "difflib", "shlex", "calendar", "fractions", "statistics"):
        snippets += [
            e.source[:200] for e in text_data.module_examples(root / f"{module}.py", module)
        ]
    return snippets[:300]


def greek_only() -> list[str]:
    split = text_data.language_split("test", 120)
    greek = split.label_names.index("el")
    return [text for text, label in zip(split.texts, split.labels, strict=True) if label == greek]


def test_reference_holds_token_statistics_of_the_validation_sentences(
    bundle: Bundle, reference: DriftReference
) -> None:
    entry = bundle.manifest["drift"]
    assert entry["features"] == "text-classifier/1" and set(entry["files"]) == {"fp32"}
    ids, _ = text_reference(bundle)
    assert reference.rows.shape == (len(ids), 5 + len(bundle.labels)) == (entry["items"], 17)
    np.testing.assert_array_equal(reference.rows[:, 0], [len(row) for row in ids])
    rows = rows_of(bundle, text_data.language_split("val", TEXT_PER_LANGUAGE).texts[:20])
    np.testing.assert_allclose(reference.rows[:20], rows, rtol=1e-4, atol=1e-4)  # as served


def test_clean_test_sentences_rarely_raise_a_false_alarm(
    bundle: Bundle, reference: DriftReference
) -> None:
    clean = rows_of(bundle, held_out_sentences())
    rng = np.random.default_rng(0)
    alarms = dict.fromkeys(("features", "classes", "mmd"), 0)
    repeats = 100
    for _ in range(repeats):
        monitor = DriftMonitor(reference, WINDOW, 10, P_VALUE)
        monitor.add(clean[rng.choice(len(clean), WINDOW, replace=False)])
        for test, result in monitor.check().items():
            alarms[test] += result.drifted
    rates = {test: count / repeats for test, count in alarms.items()}
    print(f"text: false-alarm rate over {repeats} windows of {WINDOW} test sentences: {rates}")
    assert max(rates.values()) <= 0.03


@pytest.mark.parametrize("shift", sorted(WITHIN))
def test_code_or_one_language_raises_the_alarm_within_the_stated_texts(
    bundle: Bundle, reference: DriftReference, shift: str
) -> None:
    clean = rows_of(bundle, held_out_sentences())
    shifted = rows_of(bundle, code_snippets() if shift == "code" else greek_only())
    rng = np.random.default_rng(1)
    delays, caught_by = [], set()
    for _ in range(10):
        monitor = DriftMonitor(reference, WINDOW, 10, P_VALUE)
        monitor.add(clean[rng.choice(len(clean), WINDOW, replace=False)])
        assert not any(result.drifted for result in monitor.check().values())
        order = rng.permutation(len(shifted))
        for sent in range(10, len(shifted) + 1, 10):
            monitor.add(shifted[order[sent - 10 : sent]])
            flagged = [test for test, result in monitor.check().items() if result.drifted]
            if flagged:
                delays.append(sent)
                caught_by.update(flagged)
                break
        else:
            delays.append(len(shifted) + 1)
    print(f"text, {shift}: texts until alarm, median {np.median(delays):.0f}, max {max(delays)}"
          f", first caught by {sorted(caught_by)}")  # fmt: skip
    assert max(delays) <= WITHIN[shift]


def test_the_text_service_reports_drift_of_what_it_classifies(cache: Path) -> None:
    settings = TextSettings(
        mlflow_tracking_uri=DEAD_REGISTRY,
        model_cache_dir=cache,
        text_generate_model_uri="",
        onnx_intra_op_threads=1,
        drift_window=WINDOW,
        drift_check_every=10,
        drift_p_value=P_VALUE,
        log_json=False,
    )

    def classify(client: TestClient, texts: list[str], seen_before: int) -> dict:
        for start in range(0, len(texts), 10):
            answer = client.post("/v1/text/classify", json={"texts": texts[start : start + 10]})
            assert answer.status_code == 200, answer.text
        expected = seen_before + len(texts)

        def seen() -> dict | None:
            report = client.get("/v1/model/drift").json()
            return report if report["models"]["classify"]["items_seen"] == expected else None

        return poll_until(seen, 20, f"{expected} texts observed")

    with TestClient(create_app(TextService(), settings)) as client:
        wait_ready(client, timeout_s=60)
        quiet = classify(client, held_out_sentences()[:WINDOW], 0)
        entry = quiet["models"]["classify"]
        assert entry["features"] == "text-classifier/1" and not quiet["drifted"], entry
        assert set(entry["tests"]) == {"features", "classes", "mmd"}
        drifted = classify(client, code_snippets()[:WINDOW], WINDOW)
    assert drifted["drifted"], drifted["models"]["classify"]["tests"]
