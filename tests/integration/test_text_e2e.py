"""Text: train --quick (both tasks) → export → serve, all real: MLflow server, jobs, uvicorn."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from shared.registry import RegistryClient
from tests.procs import free_port, run_module, running, wait_http
from tests.sse import parse_sse

pytestmark = pytest.mark.integration
MAX_CHARS = 600


@dataclass(frozen=True)
class Served:
    url: str
    tracking_uri: str
    workdir: Path


@pytest.fixture(scope="module")
def service(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("text")
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    # the training options ride along: freezing, accumulation, autocast and learned positions
    # (classify); label smoothing, no repeated n-grams when evaluating, the device choice
    # (auto: the CPU here) and a one-point depth x width sweep (a child run). The summarizer
    # is larger than --quick (2000 functions, 3 epochs, width 64, ~25 s on an idle core) so
    # that it beats the copy-the-function-name baseline, which a model that learned nothing
    # does not; scheduled sampling is exercised by the decoding study's test.
    options = {
        "classify": ["--freeze", "embeddings", "--accum-steps", "2", "--amp",
                     "--positional", "learned", "--epochs", "8"],
        "generate": ["--sweep", "1x16", "--label-smoothing", "0.1", "--no-repeat-ngram", "2",
                     "--device", "auto", "--train-limit", "2000", "--epochs", "3",
                     "--d-model", "64", "--heads", "4", "--eval-limit", "60"],
    }  # fmt: skip
    for task in ("classify", "generate"):
        run_module("training.text", "--task", task, "--quick", "--threads", "1", *options[task],
                   env=env, log=workdir / f"train-{task}.log")  # fmt: skip
        run_module("training.export", f"text-{task}", "--quick", "--threads", "1",
                   "--cache-dir", str(workdir / "export-cache"),
                   env=env, log=workdir / f"export-{task}.log")  # fmt: skip
    port = free_port()
    log = workdir / "service.log"
    serve_env = {
        **env,
        "MODEL_CACHE_DIR": str(workdir / "cache"),
        "MODEL_VARIANT": "fp32",  # exact agreement with PyTorch; int8 is covered by the export
        "ONNX_INTRA_OP_THREADS": "1",
        "TEXT_MAX_CHARS": str(MAX_CHARS),
    }
    cmd = [sys.executable, "-m", "services.text", "--port", str(port)]
    with running(cmd, log, serve_env) as proc:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, log, timeout_s=120)
        yield Served(f"http://127.0.0.1:{port}", mlflow_server, workdir)


def reference(served: Served, name: str):
    from models.text import load_text_bundle

    registry_client = RegistryClient(served.tracking_uri)
    bundle = registry_client.fetch(f"models:/{name}@candidate", served.workdir / "ref-cache").bundle
    return load_text_bundle(bundle), bundle


def tokenizer_of(bundle):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(bundle.file("tokenizer.json")))


def post(served: Served, route: str, body: dict) -> httpx.Response:
    return httpx.post(f"{served.url}{route}", json=body, timeout=60)


def test_exports_moved_production_with_parity(service: Served) -> None:
    client = MlflowClient(service.tracking_uri)
    classify = client.get_model_version_by_alias("text-classify", "production")
    assert classify.tags["source_model"] == "text-classify-torch"
    run = client.get_run(classify.run_id)
    assert run.data.metrics["parity_max_abs_diff"] <= 1e-4
    assert run.data.metrics["parity_top1_agreement"] == 1.0
    generate = client.get_model_version_by_alias("text-generate", "production")
    # ONNX entered the bundle: it reproduced PyTorch's greedy, beam and sampled tokens
    assert set(generate.tags["variants"].split(",")) == {"torch", "onnx"}
    metrics = client.get_run(generate.run_id).data.metrics
    for variant in ("torch", "onnx"):
        assert metrics[f"{variant}_tokens_per_s_kv_cache"] > 0
        assert metrics[f"{variant}_tokens_per_s_no_cache"] > 0


def test_training_logged_metrics_and_a_sweep_child_run(service: Served) -> None:
    client = MlflowClient(service.tracking_uri)
    classify = client.get_model_version_by_alias("text-classify-torch", "candidate")
    metrics = client.get_run(classify.run_id).data.metrics
    assert {"test_accuracy", "test_macro_f1", "trainable_parameters"} <= set(metrics)
    assert metrics["trainable_parameters"] < metrics["parameter_count"]  # embeddings frozen
    # a model that learned nothing scores the majority class's share (1/12) or less
    assert metrics["test_accuracy"] > metrics["baseline_majority_accuracy"] + 0.25
    assert 0 < metrics["baseline_char_ngram_accuracy"] <= 1  # logged as the stronger yardstick
    generate = client.get_model_version_by_alias("text-generate-torch", "candidate")
    parent = client.get_run(generate.run_id)
    for key in ("test_perplexity", "greedy_bleu", "beam_rouge_l", "greedy_chrf", "baseline_bleu"):
        assert key in parent.data.metrics
    scores = parent.data.metrics
    # untrained, the summarizer's perplexity is about its vocabulary (400) and its ROUGE-L 0
    assert scores["test_perplexity"] < 100
    best = max(scores["greedy_rouge_l"], scores["beam_rouge_l"])
    assert best > scores["baseline_rouge_l"] > 0, scores
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert [c.data.tags["mlflow.runName"] for c in children] == ["sweep 1x16"]
    assert {"test_perplexity", "train_seconds"} <= set(children[0].data.metrics)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/cross_attention_0.png" in artifacts


def test_classify_agrees_with_pytorch_in_batches(service: Served) -> None:
    import torch

    from training.text_data import language_split

    model, bundle = reference(service, "text-classify-torch")
    tokenizer = tokenizer_of(bundle)
    split = language_split("test", 4)
    response = post(service, "/v1/text/classify", {"texts": split.texts, "top_k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == "text-classify" and len(body["results"]) == len(split.texts)
    for text, result in zip(split.texts, body["results"], strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([tokenizer.encode(text).ids]))[0]
        probs = torch.softmax(logits, -1).numpy()
        assert result["label"] == bundle.labels[int(np.argmax(probs))]
        assert abs(result["score"] - float(probs.max())) < 1e-4
        assert len(result["top_k"]) == 3
        assert [s["score"] for s in result["top_k"]] == sorted(
            (s["score"] for s in result["top_k"]), reverse=True
        )


def test_greedy_is_deterministic_and_equals_the_pytorch_reference(service: Served) -> None:
    from models.decoding import DecodeOptions, generate, recorded_rules
    from models.text_input import WORDS_INPUT, code_input

    model, bundle = reference(service, "text-generate-torch")
    tokenizer = tokenizer_of(bundle)
    # training recorded how it prepared sources; the service must prepare requests the same way
    assert bundle.preprocessing["input_format"] == WORDS_INPUT
    source = "def area(width, height):\n    return width * height"
    ids = tokenizer.encode(code_input(source, WORDS_INPUT)).ids
    # and decode by the rules its evaluation used (no repeated bigrams, as trained above)
    assert recorded_rules(bundle.manifest) == {"no_repeat_ngram": 2}
    expected = generate(model, ids, DecodeOptions(max_new_tokens=12, no_repeat_ngram=2))
    body = {"text": source, "max_new_tokens": 12}
    first, second = (
        post(service, "/v1/text/generate", body),
        post(service, "/v1/text/generate", body),
    )
    assert first.status_code == 200, first.text
    assert first.json()["text"] == second.json()["text"] == tokenizer.decode(expected)
    assert first.json()["tokens"] == len(expected)
    assert first.json()["model"]["name"] == "text-generate"
    assert first.json()["model"]["variant"] == served_generate_variant(service)


def served_generate_variant(served: Served) -> str:
    """The summarizer variant the service loaded: the bundle's default (the faster engine)."""
    client = MlflowClient(served.tracking_uri)
    version = client.get_model_version_by_alias("text-generate", "production")
    registry_client = RegistryClient(served.tracking_uri)
    bundle = registry_client.fetch(
        f"models:/text-generate/{version.version}", served.workdir / "ref-cache"
    ).bundle
    return bundle.default_variant


def test_beam_search_with_one_beam_equals_greedy(service: Served) -> None:
    source = "def mean(values):\n    return sum(values) / len(values)"
    greedy = post(service, "/v1/text/generate", {"text": source, "max_new_tokens": 10})
    body = {"text": source, "max_new_tokens": 10, "strategy": "beam", "num_beams": 1}
    beam = post(service, "/v1/text/generate", body)
    assert beam.status_code == 200, beam.text
    assert beam.json()["text"] == greedy.json()["text"]


def test_sampling_with_a_seed_is_reproducible(service: Served) -> None:
    body = {"text": "def f(x):\n    return x + 1", "strategy": "sample", "seed": 7,
            "temperature": 1.5, "max_new_tokens": 12}  # fmt: skip
    first, second = (
        post(service, "/v1/text/generate", body),
        post(service, "/v1/text/generate", body),
    )
    assert first.status_code == 200, first.text
    assert first.json()["text"] == second.json()["text"]
    assert first.json()["seed"] == 7


@pytest.mark.parametrize("strategy", ["greedy", "sample"])
def test_streaming_delivers_the_same_text_in_several_events(service: Served, strategy: str) -> None:
    body = {"text": "def g(items):\n    return sorted(items)", "strategy": strategy, "seed": 3,
            "temperature": 1.5, "max_new_tokens": 12}  # fmt: skip
    plain = post(service, "/v1/text/generate", body).json()
    streamed = post(service, "/v1/text/generate", {**body, "stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    parsed = parse_sse(streamed.text)
    kinds = [kind for kind, _ in parsed]
    assert kinds[-1] == "result" and set(kinds[:-1]) == {"token"}
    pieces = [data["text"] for kind, data in parsed if kind == "token"]
    assert "".join(pieces) == parsed[-1][1]["text"] == plain["text"]
    assert parsed[-1][1]["tokens"] == plain["tokens"]
    if strategy == "sample":
        assert len(pieces) >= 2


def test_attention_map_is_a_png(service: Served) -> None:
    response = post(service, "/v1/text/attention", {"text": "Der Hund läuft.", "layer": 0})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG\r\n\x1a\n")


def test_attention_entropy_per_head_is_the_pytorch_models(service: Served) -> None:
    import torch

    from models.attention_map import head_entropy

    text = "Der Hund läuft schnell nach Hause."
    response = post(service, "/v1/text/attention/entropy", {"text": text})
    assert response.status_code == 200, response.text
    body = response.json()
    model, bundle = reference(service, "text-classify-torch")
    ids = tokenizer_of(bundle).encode(text).ids
    with torch.no_grad():
        maps = model.attention_maps(torch.tensor([ids]))
    expected = [head_entropy(m[0].numpy()) for m in maps]
    assert len(body["tokens"]) == len(ids) and body["model"]["name"] == "text-classify"
    assert np.allclose(body["entropy"], expected, atol=1e-3)
    assert all(0 <= e <= 1 for layer in body["normalized_entropy"] for e in layer)


LONG_TEXT = " ".join(f"w{i}x{i * 7}" for i in range(60))  # < MAX_CHARS, > the quick max_len


@pytest.mark.parametrize(
    ("route", "raw", "status", "mentions"),
    [
        ("/v1/text/classify", '{"texts": [""]}', 400, "texts[0] is empty"),
        ("/v1/text/classify", '{"texts": ["ok", "\\ud800x"]}', 400, "lone surrogate"),
        ("/v1/text/classify", json.dumps({"texts": ["a" * (MAX_CHARS + 1)]}), 400, "limit"),
        ("/v1/text/classify", json.dumps({"texts": [LONG_TEXT]}), 400, "tokens"),
        ("/v1/text/classify", '{"texts": []}', 422, "texts"),
        ("/v1/text/classify", '{"texts": ["ok"], "top_k": 99}', 422, "top_k"),
        ("/v1/text/generate", '{"text": "  "}', 400, "empty"),
        ("/v1/text/generate", '{"text": "\\udc00"}', 400, "lone surrogate"),
        ("/v1/text/generate", json.dumps({"text": LONG_TEXT}), 400, "tokens"),
        ("/v1/text/generate", '{"text": "x", "max_new_tokens": 100000}', 422, "max_new_tokens"),
        ("/v1/text/generate", '{"text": "x", "temperature": 0}', 422, "temperature"),
        ("/v1/text/generate", '{"text": "x", "top_p": 1.5}', 422, "top_p"),
        ("/v1/text/generate", '{"text": "x", "strategy": "magic"}', 422, "strategy"),
        ("/v1/text/generate", '{"text": "x", "num_beams": 0}', 422, "num_beams"),
        ("/v1/text/generate", '{"text": "x", "stream": true, "seed": -1}', 422, "seed"),
        ("/v1/text/generate", "not json", 422, "JSON"),
        ("/v1/text/attention", '{"text": "Hallo", "layer": 9}', 422, "layer"),
        ("/v1/text/attention", '{"text": "Hallo", "head": 60}', 422, "head"),
        ("/v1/text/attention/entropy", '{"text": ""}', 400, "empty"),
    ],
)
def test_bad_input_is_a_clear_4xx(
    service: Served, route: str, raw: str, status: int, mentions: str
) -> None:
    response = httpx.post(f"{service.url}{route}", content=raw,
                          headers={"content-type": "application/json"}, timeout=30)  # fmt: skip
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert mentions in response.json()["detail"]


def test_non_json_body_is_415(service: Served) -> None:
    response = httpx.post(f"{service.url}/v1/text/classify", content=b"hello", timeout=30)
    assert response.status_code == 415
