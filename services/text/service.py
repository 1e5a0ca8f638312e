"""The text service: language identification (ONNX, batched) and code summarization (PyTorch
or ONNX, token by token) in one process, each model loaded, watched and swapped on its own.

`text-classify` (MODEL_URI) serves /v1/text/classify and the attention maps; `text-generate`
(TEXT_GENERATE_MODEL_URI; empty turns it off, and then no PyTorch is needed) serves
/v1/text/generate, one generation at a time with a bounded wait.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from pydantic import Field

from services.text.generation import TextGenerator
from services.text.schemas import (
    AttentionBody,
    AttentionEntropyBody,
    AttentionEntropyResponse,
    GenerateBody,
    GenerateResponse,
    TextClassifyBody,
    TextClassifyResponse,
)
from services.text.tokens import Tokens, check_text
from shared.bundle import Bundle
from shared.errors import InvalidParameterError, ModelNotReadyError
from shared.onnx import OnnxModel
from shared.predlog import summarize_input, summarize_output
from shared.service import (
    Call,
    Endpoint,
    Lane,
    ModelService,
    ModelSpec,
    Pool,
    Service,
    top1_agreement,
)
from shared.settings import ServingSettings


class TextSettings(ServingSettings):
    """The text service's settings: the summarizer's bundle and the text limits."""

    text_generate_model_uri: str = Field(
        "models:/text-generate@production",
        description="The summarization bundle to serve; empty: classify only (no PyTorch).",
    )
    text_generate_variant: str = Field(
        "", description="Variant of the summarization bundle (torch, onnx); empty = its default."
    )
    text_max_chars: int = Field(4000, ge=1, description="Longest accepted text, in characters.")
    text_max_waiting_generations: int = Field(
        8, ge=1, description="Generations that may wait for the generator; beyond: 503."
    )


class TextClassifier(ModelService):
    """Texts → language labels (batched ONNX); attention maps from the bundle's weights."""

    def load(self, bundle: Bundle, variant: str, settings: TextSettings) -> None:
        self.bundle = bundle
        self.variant = variant
        self.labels = bundle.labels
        self.classifier = OnnxModel.from_bundle(bundle, variant, settings.intra_op_threads())
        self.tokens = Tokens(bundle)
        self.max_chars = settings.text_max_chars
        self._attention_model: Any = None
        self._attention_lock = threading.Lock()

    def warmup(self) -> None:
        self.classifier.smoke_test(self.bundle, self.variant)

    def describe(self) -> dict[str, Any]:
        return {
            "task": "text",
            "labels": self.labels,
            "variants": sorted(self.bundle.variants),
            "max_tokens": self.tokens.max_len,
            "max_chars": self.max_chars,
        }

    def tokenize(self, body: TextClassifyBody) -> list[list[int]]:
        """One batch item per text (a request of n texts is n items in the batcher)."""
        if body.top_k > len(self.labels):
            raise InvalidParameterError(f"top_k must be between 1 and {len(self.labels)}")
        items = []
        for index, text in enumerate(body.texts):
            check_text(text, f"texts[{index}]", self.max_chars)
            items.append(self.tokens.encode(text, f"texts[{index}]"))
        return items

    def predict(self, items: list[list[int]]) -> list[np.ndarray]:
        """Logits per text; the batch is right-padded (the model ignores padding)."""
        width = max(len(ids) for ids in items)
        batch = np.zeros((len(items), width), dtype=np.int64)
        for row, ids in enumerate(items):
            batch[row, : len(ids)] = ids
        return list(self.classifier.run({"input": batch})[0])

    def agreement(self, mine: np.ndarray, theirs: np.ndarray) -> float:
        """Shadow traffic: 1 when both versions name the same language first."""
        return top1_agreement(mine, theirs)

    def results(self, outputs: list[np.ndarray], body: TextClassifyBody) -> dict[str, Any]:
        answers = []
        for logits in outputs:
            shifted = np.exp(logits - logits.max())
            scores = shifted / shifted.sum()
            order = np.argsort(-scores, kind="stable")[: body.top_k]
            top = [{"label": self.labels[i], "score": float(scores[i])} for i in order]
            answers.append({**top[0], "top_k": top})
        return {"results": answers}

    def summarize(self, output: np.ndarray) -> dict[str, Any]:
        """The prediction log's output: top-1 language and its softmax score."""
        shifted = np.exp(output - output.max())
        best = int(shifted.argmax())
        return {"label": self.labels[best], "score": round(float(1.0 / shifted.sum()), 6)}

    def summarize_call(
        self, body: AttentionBody | AttentionEntropyBody, output: Any
    ) -> dict[str, Any]:
        """The prediction log's item of an attention call: the text (hash, length), the map
        asked for, and the PNG's size or the tokens' count."""
        asked = {"layer": body.layer, "head": body.head} if isinstance(body, AttentionBody) else {}
        answer = summarize_output(output) if isinstance(output, bytes) else {}
        if isinstance(output, dict):
            answer = {"tokens": len(output["tokens"])}
        return {"input": {**summarize_input(body.text), **asked}, "output": answer}

    def attention(self, body: AttentionBody, call: Call) -> bytes:
        """The chosen layer/head's self-attention over the text's tokens, as a PNG."""
        from models.attention_map import attention_png

        ids, maps = self._attention_maps(body.text)
        layers, heads = len(maps), maps[0].shape[0]
        if not -layers <= body.layer < layers or body.head >= heads:
            raise InvalidParameterError(
                f"layer must be in [{-layers}, {layers - 1}] and head in [0, {heads - 1}]"
            )
        tokens = [self.tokens.tokenizer.id_to_token(i) for i in ids]
        return attention_png(maps[body.layer][body.head], tokens, tokens)

    def attention_entropy(self, body: AttentionEntropyBody, call: Call) -> dict[str, Any]:
        """Per layer and head, how spread the attention over the text's tokens is."""
        from models.attention_map import head_entropy

        ids, maps = self._attention_maps(body.text)
        entropy = [head_entropy(m) for m in maps]
        scale = float(np.log(max(2, len(ids))))
        return {
            "tokens": [self.tokens.tokenizer.id_to_token(i) for i in ids],
            "entropy": [[round(float(e), 4) for e in layer] for layer in entropy],
            "normalized_entropy": [
                [round(float(e) / scale, 4) for e in layer] for layer in entropy
            ],
        }

    def _attention_maps(self, text: str) -> tuple[list[int], list[np.ndarray]]:
        """The text's ids and each encoder layer's (heads, tokens, tokens) attention weights,
        from the bundle's PyTorch weights (loaded on first use)."""
        try:
            import torch
        except ImportError as exc:  # a classify-only install (the serve extra has no torch)
            raise ModelNotReadyError("attention maps need PyTorch, not installed here") from exc

        from models.text import load_text_bundle

        check_text(text, "text", self.max_chars)
        ids = self.tokens.encode(text, "text")
        with self._attention_lock:
            if self._attention_model is None:
                self._attention_model = load_text_bundle(self.bundle)
            with torch.inference_mode():
                maps = self._attention_model.attention_maps(torch.tensor([ids]))
        return ids, [m[0].numpy() for m in maps]


class TextService(Service):
    """/v1/text/classify (batched), /v1/text/generate (JSON or SSE), /v1/text/attention (PNG)
    and /v1/text/attention/entropy (JSON)."""

    name = "text"
    settings_class = TextSettings
    models = (
        ModelSpec("classify", TextClassifier, "text-classify"),
        ModelSpec(
            "generate",
            TextGenerator,
            "text-generate",
            uri_setting="text_generate_model_uri",
            variant_setting="text_generate_variant",
            optional=True,
        ),
    )
    pools = (
        Pool("generate", workers=1, queue="text_max_waiting_generations"),
        Pool("attention", workers=1, queue="max_queue"),
    )
    endpoints = (
        Endpoint(
            "/v1/text/classify",
            Lane.BATCHED,
            "Identify the language of each text; top-k labels with scores.",
            body=TextClassifyBody,
            preprocess=TextClassifier.tokenize,
            postprocess=TextClassifier.results,
            response=TextClassifyResponse,
        ),
        Endpoint(
            "/v1/text/generate",
            Lane.STREAMING,
            "Summarize a Python function; JSON, or server-sent events with stream=true.",
            model="generate",
            body=GenerateBody,
            preprocess=TextGenerator.prepare,
            call=TextGenerator.summarize,
            pool="generate",
            shadow=True,  # agreement: the first words (TextGenerator.agreement)
            response=GenerateResponse,
        ),
        Endpoint(
            "/v1/text/attention",
            Lane.DIRECT,
            "The classifier's self-attention of one layer/head over a text's tokens, as PNG.",
            body=AttentionBody,
            call=TextClassifier.attention,
            pool="attention",
            media_type="image/png",
        ),
        Endpoint(
            "/v1/text/attention/entropy",
            Lane.DIRECT,
            "Per encoder layer and head, the entropy of the classifier's attention over a text.",
            body=AttentionEntropyBody,
            call=TextClassifier.attention_entropy,
            pool="attention",
            response=AttentionEntropyResponse,
        ),
    )
