"""The two text tasks `training.text` trains: data, loss and evaluation of each.

A task turns its splits into padded id batches, computes the training loss (classification:
cross-entropy; summarization: teacher-forced token cross-entropy with optional scheduled
sampling) and evaluates the trained model (accuracy/F1; perplexity, BLEU, ROUGE-L, chrF for
greedy and beam decoding against the copy-the-function-name baseline).
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attention_map import attention_png
from models.decoding import DecodeOptions, generate
from models.text import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS
from models.text_input import RAW_INPUT, WORDS_INPUT, code_input
from training import text_data, tracking
from training.text_eval import classify_baselines, generation_scores

MAX_TARGET_TOKENS = 40


def pad(rows: Sequence[Sequence[int]]) -> Tensor:
    """Right-pad id lists with PAD_ID into a (batch, longest) tensor."""
    width = max(1, max(len(r) for r in rows))
    return torch.tensor([list(r) + [PAD_ID] * (width - len(r)) for r in rows], dtype=torch.long)


def chunks(count: int, size: int, seed: int) -> Iterator[list[int]]:
    order = list(range(count))
    random.Random(seed).shuffle(order)
    for start in range(0, count, size):
        yield order[start : start + size]


def bucketed_chunks(
    lengths: Sequence[int], size: int, seed: int, pool: int = 64
) -> Iterator[list[int]]:
    """Batches of similar lengths: shuffle, sort each pool of `pool` batches by length, cut,
    shuffle the batches. Far less padding than random batches (sources vary 10-128 tokens),
    so an epoch costs less, while every epoch still sees a different random grouping."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), size * pool):
        chunk = sorted(order[start : start + size * pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    rng.shuffle(batches)
    yield from batches


@dataclass
class TextData:
    """Encoded splits, the tokenizer and how to batch the training split."""

    tokenizer: Any
    label_names: list[str]
    inputs: dict[str, list[list[int]]]
    targets: dict[str, list[Any]]
    batch_size: int
    seed: int
    raw: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    bucket: bool = False  # batch similar lengths together (see `bucketed_chunks`)

    @property
    def classes(self) -> int:
        return len(self.label_names)

    def sizes(self) -> dict[str, int]:
        return {f"{name}_size": len(rows) for name, rows in self.inputs.items()}

    def batches(self, epoch: int) -> Iterator[tuple[Tensor, ...]]:
        rows = self.inputs["train"]
        if self.bucket:
            order = bucketed_chunks([len(r) for r in rows], self.batch_size, self.seed + epoch)
        else:
            order = chunks(len(rows), self.batch_size, self.seed + epoch)
        for index in order:
            yield self.batch("train", index)

    def batch(self, split: str, index: Sequence[int]) -> tuple[Tensor, ...]:
        """Padded ids and targets of `index`, on the training device."""
        ids = pad([self.inputs[split][i] for i in index])
        targets = [self.targets[split][i] for i in index]
        labels = torch.tensor(targets) if isinstance(targets[0], int) else pad(targets)
        return ids.to(self.device), labels.to(self.device)


def log_png(png: bytes, artifact: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact).name
        path.write_bytes(png)
        mlflow.log_artifact(str(path), str(Path(artifact).parent))


class Task:
    """What differs between the two tasks; `training.text` drives the rest."""

    kind: ClassVar[str]
    quick: ClassVar[dict[str, Any]]
    full: ClassVar[dict[str, Any]]
    # how a text becomes the model's input (`models.text_input`); recorded in the bundle
    input_format: ClassVar[str] = RAW_INPUT
    label_smoothing = 0.0

    def load(self, args: argparse.Namespace) -> TextData:
        raise NotImplementedError

    def io_specs(self, data: TextData) -> dict[str, Any]:
        """Tensor specs for the manifest (none: the generator is served with PyTorch)."""
        return {}

    def decoding_rules(self, args: argparse.Namespace) -> dict[str, Any]:
        """Manifest fields naming how the evaluation decoded (none: a classifier)."""
        return {}

    def batch_count(self, args: argparse.Namespace) -> int:
        return math.ceil(args.train_size / args.batch_size)

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...], sampling: float) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def val_loss(self, model: nn.Module, data: TextData, split: str = "val") -> float:
        model.eval()
        total, count = 0.0, 0
        for start in range(0, len(data.inputs[split]), 64):
            index = range(start, min(start + 64, len(data.inputs[split])))
            total += float(self.loss(model, data.batch(split, index), 0.0)) * len(index)
            count += len(index)
        return total / max(1, count)


def tokenize(tokenizer: Any, texts: Sequence[str], limit: int) -> list[list[int]]:
    return [encoding.ids[:limit] for encoding in tokenizer.encode_batch(list(texts))]


class Classify(Task):
    """Language identification with an encoder-only classifier."""

    kind = "classifier"
    quick: ClassVar[dict[str, Any]] = {
        "layers": 1,
        "d_model": 32,
        "heads": 2,
        "vocab_size": 400,
        "epochs": 4,
        "batch_size": 16,
        "train_limit": 40,
        "lr": 3e-3,
        "max_len": 128,
        "eval_limit": 0,
    }
    full: ClassVar[dict[str, Any]] = {
        "layers": 2,
        "d_model": 64,
        "heads": 4,
        "vocab_size": 8000,
        "epochs": 2,
        "batch_size": 64,
        "train_limit": 1500,
        "lr": 3e-3,
        "max_len": 64,
        "eval_limit": 0,
    }

    def load(self, args: argparse.Namespace) -> TextData:
        per = args.train_limit
        splits = {
            "train": text_data.language_split("train", per),
            "val": text_data.language_split("val", max(5, per // 8)),
            "test": text_data.language_split("test", max(10, per // 3)),
        }
        tokenizer = text_data.train_tokenizer(
            splits["train"].texts, args.vocab_size, SPECIAL_TOKENS
        )
        args.train_size = len(splits["train"].texts)
        return TextData(
            tokenizer,
            splits["train"].label_names,
            {k: tokenize(tokenizer, s.texts, args.max_len) for k, s in splits.items()},
            {k: s.labels for k, s in splits.items()},
            args.batch_size,
            args.seed,
            raw={k: s.texts for k, s in splits.items()},
        )

    def io_specs(self, data: TextData) -> dict[str, Any]:
        """The ONNX graph's tensors: token ids in, logits out (both axes of ids dynamic)."""
        return {
            "inputs": [{"name": "input", "dtype": "int64", "shape": [-1, -1]}],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, data.classes]}],
        }

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...], sampling: float) -> Tensor:
        ids, labels = batch
        return F.cross_entropy(model(ids), labels)

    @torch.no_grad()
    def predict(self, model: nn.Module, data: TextData, split: str) -> np.ndarray:
        model.eval()
        rows = len(data.inputs[split])
        out = [
            model(data.batch(split, range(s, min(s + 128, rows)))[0]).argmax(1)
            for s in range(0, rows, 128)
        ]
        return torch.cat(out).cpu().numpy()

    def sweep_metrics(self, model: nn.Module, data: TextData) -> dict[str, float]:
        predicted = self.predict(model, data, "test")
        return {"test_accuracy": float(np.mean(predicted == np.array(data.targets["test"])))}

    def evaluate(self, model: nn.Module, data: TextData, args: argparse.Namespace) -> dict:
        labels = np.array(data.targets["test"])
        predicted = self.predict(model, data, "test")
        metrics = tracking.classification_metrics(labels, predicted, data.label_names, "test")
        tracking.log_figure(
            tracking.confusion_matrix_figure(labels, predicted, data.label_names),
            "plots/confusion_matrix.png",
        )
        for i in range(3):
            ids = torch.tensor([data.inputs["test"][i]], device=data.device)
            with torch.no_grad():
                weights = model.attention_maps(ids)[-1][0, 0].float().cpu().numpy()
            tokens = [data.tokenizer.id_to_token(t) for t in data.inputs["test"][i]]
            log_png(attention_png(weights, tokens, tokens), f"plots/attention_{i}.png")
        kept = {k: v for k, v in metrics.items() if k in {"test_accuracy", "test_macro_f1"}}
        split = ("train", "test")
        return {**kept, **classify_baselines(*((data.raw[s], data.targets[s]) for s in split))}


class Generate(Task):
    """Code summarization with an encoder-decoder."""

    kind = "seq2seq"
    quick: ClassVar[dict[str, Any]] = {
        "layers": 1,
        "d_model": 32,
        "heads": 2,
        "vocab_size": 400,
        "epochs": 1,
        "batch_size": 16,
        "train_limit": 48,
        "lr": 3e-3,
        "max_len": 64,
        "eval_limit": 4,
        "extra_packages": "",
    }
    full: ClassVar[dict[str, Any]] = {
        "layers": 2,
        "d_model": 128,
        "heads": 4,
        "vocab_size": 4000,
        "epochs": 5,
        "batch_size": 32,
        "train_limit": None,
        "lr": 2e-3,
        "max_len": 128,
        "eval_limit": 200,
        "extra_packages": ",".join(text_data.EXTRA_PACKAGES),
        "label_smoothing": 0.1,
        "no_repeat_ngram": 2,
    }
    input_format = WORDS_INPUT

    def load(self, args: argparse.Namespace) -> TextData:
        packages = [p for p in args.extra_packages.split(",") if p]
        splits = text_data.code_splits(args.train_limit, packages)
        sources = {
            k: [code_input(e.source, self.input_format) for e in s] for k, s in splits.items()
        }
        corpus = [*sources["train"], *(e.summary for e in splits["train"])]
        tokenizer = text_data.train_tokenizer(corpus, args.vocab_size, SPECIAL_TOKENS)
        args.train_size = len(splits["train"])
        inputs = {k: tokenize(tokenizer, rows, args.max_len) for k, rows in sources.items()}
        summaries = {
            k: tokenize(tokenizer, [e.summary for e in s], MAX_TARGET_TOKENS - 2)
            for k, s in splits.items()
        }
        targets = {k: [[BOS_ID, *t, EOS_ID] for t in rows] for k, rows in summaries.items()}
        self.label_smoothing = args.label_smoothing
        return TextData(
            tokenizer, [], inputs, targets, args.batch_size, args.seed, raw=splits, bucket=True
        )

    def decoding_rules(self, args: argparse.Namespace) -> dict[str, Any]:
        """The rules the evaluation decoded with; the service applies them to every request."""
        return {"decoding": {"no_repeat_ngram": args.no_repeat_ngram}}

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...], sampling: float) -> Tensor:
        src, tgt = batch
        tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
        if sampling > 0 and model.training:
            tgt_in = self.scheduled_inputs(model, src, tgt_in, sampling)
        logits = model(src, tgt_in).flatten(0, 1).float()
        smoothing = self.label_smoothing if model.training else 0.0  # val loss: true perplexity
        return F.cross_entropy(
            logits, tgt_out.flatten(), ignore_index=PAD_ID, label_smoothing=smoothing
        )

    @staticmethod
    def scheduled_inputs(model: nn.Module, src: Tensor, tgt_in: Tensor, rate: float) -> Tensor:
        """Scheduled sampling: replace a share of the decoder's inputs (after BOS) by its own
        teacher-forced predictions, so training sees the mistakes decoding will make."""
        with torch.no_grad():
            predicted = model(src, tgt_in).argmax(-1)
        swap = torch.rand(tgt_in.shape, device=tgt_in.device) < rate
        swap[:, 0] = False
        shifted = torch.cat([tgt_in[:, :1], predicted[:, :-1]], dim=1)
        return torch.where(swap & (tgt_in != PAD_ID), shifted, tgt_in)

    def sweep_metrics(self, model: nn.Module, data: TextData) -> dict[str, float]:
        return {"test_perplexity": math.exp(self.val_loss(model, data, "test"))}

    def decode_all(
        self, model: nn.Module, data: TextData, count: int, strategy: str, no_repeat: int
    ) -> list[str]:
        model.eval()
        options = DecodeOptions(
            strategy=strategy,
            max_new_tokens=MAX_TARGET_TOKENS,
            num_beams=4,
            no_repeat_ngram=no_repeat,
        )
        return [
            data.tokenizer.decode(generate(model, data.inputs["test"][i], options)).strip()
            for i in range(count)
        ]

    def evaluate(self, model: nn.Module, data: TextData, args: argparse.Namespace) -> dict:
        metrics = self.sweep_metrics(model, data)
        examples = data.raw["test"][: args.eval_limit or len(data.raw["test"])]
        references = [e.summary for e in examples]
        for strategy in ("greedy", "beam"):
            hypotheses = self.decode_all(model, data, len(examples), strategy, args.no_repeat_ngram)
            scores = generation_scores(hypotheses, references)
            metrics.update({f"{strategy}_{k}": v for k, v in scores.items()})
            if strategy == "greedy":
                lines = [
                    f"{e.module}.{e.name}\n  ref: {e.summary}\n  hyp: {h}\n"
                    for e, h in zip(examples, hypotheses, strict=True)
                ]
                mlflow.log_text("\n".join(lines), "samples_greedy.txt")
        baseline = generation_scores([e.baseline() for e in examples], references)
        metrics.update({f"baseline_{k}": v for k, v in baseline.items()})
        metrics["eval_examples"] = len(examples)
        self.log_cross_attention(model, data)
        return metrics

    def log_cross_attention(self, model: nn.Module, data: TextData) -> None:
        """Cross-attention (last layer, head 0) of the reference summary over the source."""
        model.eval()
        for i in range(min(2, len(data.inputs["test"]))):
            src = torch.tensor([data.inputs["test"][i][:48]], device=data.device)
            tgt = torch.tensor([data.targets["test"][i][:-1]], device=data.device)
            with torch.no_grad():
                maps = model.decode(tgt, model.encode(src))[2]
            names = [data.tokenizer.id_to_token(t) for t in src[0].tolist()]
            queries = [data.tokenizer.id_to_token(t) for t in tgt[0].tolist()]
            log_png(
                attention_png(maps[-1][0, 0].float().cpu().numpy(), queries, names),
                f"plots/cross_attention_{i}.png",
            )


TASKS: dict[str, Task] = {"classify": Classify(), "generate": Generate()}
