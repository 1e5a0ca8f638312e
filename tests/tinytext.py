"""Tiny text bundles built by the tests themselves: the language-ID classifier and the summarizer.

Random weights (no training) on a byte-level BPE tokenizer trained in a second on generated
sentences. Each torch bundle is written as training writes it; the classifier then goes through
the exporter's own ONNX export and bundle writer, the summarizer through the text-generate
exporter's `build` (smoke cases, speed figures, manifest), so the service loads them exactly
as it loads real ones.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from models.text import (
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    TextConfig,
    build_model,
    load_text_bundle,
    write_text_bundle,
)
from shared.bundle import open_bundle
from shared.cache import FetchedModel
from tests.tinyexplain import one_torch_thread
from training import text_data
from training.export import text_generate, writer
from training.export.evaluate import Figures
from training.export.text_classify import export_graph
from training.text_tasks import TASKS, TextData, pad

#: small enough to serve in milliseconds; `max_len` and `max_target_len` are the model's own
#: bounds on source tokens and generated tokens, so they also bound what one request costs
SIZES = {"d_model": 16, "heads": 2, "layers": 1, "decoder_layers": 1, "d_ff": 32, "dropout": 0.0}
MAX_LEN = 256  # the load test's code snippets (<= 300 characters) fit this tokenizer
MAX_TARGET_LEN = 17
LABELS = sorted(text_data.LANGUAGES)


def write_tokenizer(path: Path, vocab_size: int = 1000) -> int:
    """A byte-level BPE tokenizer (any text round-trips) over sentences and a little code, so
    the load test's payloads fit the models' limits; returns its vocabulary size."""
    code = text_data.module_examples(text_data.stdlib_root() / "textwrap.py", "textwrap")
    texts = text_data.language_split("train", 30).texts + [e.source for e in code]
    tokenizer = text_data.train_tokenizer(texts, vocab_size, SPECIAL_TOKENS)
    tokenizer.save(str(path))  # type: ignore[attr-defined]
    return int(tokenizer.get_vocab_size())  # type: ignore[attr-defined]


def torch_bundle(directory: Path, config: TextConfig, tokenizer: Path, **manifest: object) -> None:
    """A `<task>-torch` bundle of a randomly initialized model, as training would write it."""
    torch.manual_seed(0)
    directory.mkdir(parents=True)
    write_text_bundle(directory, build_model(config).eval(), config, tokenizer, **manifest)


def fetched(directory: Path, name: str) -> FetchedModel:
    return FetchedModel(open_bundle(directory), name, "1", None, from_cache_only=True)


def write_classify_bundle(out: Path, source: FetchedModel, work: Path) -> None:
    """The exporter's fp32 ONNX graph and bundle writer over the tiny classifier."""
    model = load_text_bundle(source.bundle)
    graph = work / "model.fp32.onnx"
    export_graph(model, MAX_LEN, graph, opset=18)
    figures = Figures(
        name="fp32",
        file=writer.variant_file("fp32"),
        accuracy=0.0,  # untrained: the tests check the service, not the model
        macro_f1=0.0,
        agreement_fp32=1.0,
        size_bytes=graph.stat().st_size,
        params=sum(p.numel() for p in model.parameters()),
        flops=0,
        in_bundle=True,
    )
    out.mkdir(parents=True)
    shutil.copyfile(source.bundle.file(TOKENIZER_FILE), out / TOKENIZER_FILE)
    writer.write_bundle(out, source, "text-classify", [figures], work, sample_ids(), "fp32", {})


def write_generate_bundle(out: Path, source: FetchedModel) -> None:
    """The text-generate exporter's bundle (torch variant only: ONNX export takes a minute)."""
    out.mkdir(parents=True)
    args = argparse.Namespace(name="text-generate", threads=1, smoke_examples=1, timing_runs=1)
    text_generate.build(source, out, argparse.Namespace(**vars(args), onnx=False))


def seed_cache(cache_dir: Path) -> None:
    """`text-classify` and `text-generate` version 1 @production in a model cache."""
    with one_torch_thread(), tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        vocab = write_tokenizer(work / TOKENIZER_FILE)
        common = {"vocab_size": vocab, "max_len": MAX_LEN, **SIZES}
        classifier = TextConfig("classifier", num_classes=len(LABELS), **common)
        seq2seq = TextConfig("seq2seq", max_target_len=MAX_TARGET_LEN, **common)
        for task, config, labels in (("classify", classifier, LABELS), ("generate", seq2seq, [])):
            data = TextData(None, labels, inputs={}, targets={}, batch_size=1, seed=0)
            torch_bundle(work / task, config, work / TOKENIZER_FILE, task=f"text-{task}",
                         name=f"text-{task}-torch", labels=labels, source={"run_id": "test"},
                         metrics={}, special_tokens=SPECIAL_TOKENS,
                         **TASKS[task].io_specs(data))  # fmt: skip
        classify = fetched(work / "classify", "text-classify-torch")
        write_classify_bundle(cache_dir / "text-classify" / "1", classify, work)
        generate = fetched(work / "generate", "text-generate-torch")
        write_generate_bundle(cache_dir / "text-generate" / "1", generate)
    for name in ("text-classify", "text-generate"):
        (cache_dir / name / "aliases.json").write_text(json.dumps({"production": "1"}))


def sample_ids() -> np.ndarray:
    """Token ids the classifier's smoke test runs (two rows, right-padded)."""
    return pad([[5, 6, 7, 8], [9, 10]]).numpy()
