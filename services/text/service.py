"""TextService: language identification (ONNX) and code summarization (PyTorch) in one process.

The primary bundle (MODEL_URI, default `models:/text-classify@production`) is the ONNX
classifier, batched by the shared runtime. `load` also fetches the `text-generate` bundle
(TEXT_GENERATE_MODEL_URI) into the same verified cache, so the service is ready only when both
models are loaded. Generation runs one request at a time on its own thread with the KV cache;
its tokens are the ones `training.models.decoding` gives the PyTorch reference.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.text.routes import router
from services.text.schemas import AttentionRequest, GenerateRequest
from shared.bundle import Bundle
from shared.errors import (
    BundleError,
    DeadlineExceededError,
    InvalidInputError,
    InvalidParameterError,
    ModelNotReadyError,
    OverloadedError,
)
from shared.onnx import OnnxModel
from shared.registry import FetchedModel, fetch
from shared.service import ModelService
from shared.settings import ServingSettings
from training.text_data import RAW_INPUT, code_input

TOKENIZER = "tokenizer.json"


class TextSettings(BaseSettings):
    """The text service's own knobs (environment variables, prefix TEXT_)."""

    model_config = SettingsConfigDict(env_prefix="TEXT_", case_sensitive=False, extra="ignore")

    generate_model_uri: str = Field(
        "models:/text-generate@production",
        description="The summarization bundle to serve; empty: classify only (no PyTorch).",
    )
    generate_variant: str = Field(
        "", description="Variant of the summarization bundle (torch, onnx); empty = its default."
    )
    max_chars: int = Field(4000, ge=1, description="Longest accepted text, in characters.")
    max_waiting_generations: int = Field(
        8, ge=1, description="Generations that may wait for the generator; beyond: 503."
    )


@dataclass
class ClassifyItem:
    """One text of a classify request (a request of n texts is n items in the batcher)."""

    text: str
    index: int
    top_k: int


def check_text(text: str, field: str, max_chars: int) -> None:
    """Empty, too long, holding NUL or not encodable as UTF-8 (lone surrogates): the client's
    mistake, said plainly (nothing is silently replaced)."""
    if not text.strip():
        raise InvalidInputError(f"{field} is empty")
    if len(text) > max_chars:
        raise InvalidInputError(f"{field} has {len(text)} characters; the limit is {max_chars}")
    if (nul := text.find("\x00")) >= 0:
        raise InvalidInputError(f"{field} contains a NUL character at {nul}; remove it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{field} is not valid Unicode: lone surrogate {text[exc.start]!r} at {exc.start}"
        ) from exc


class Tokens:
    """A bundle's tokenizer (Hugging Face `tokenizers`, no torch) with the model's length limit."""

    def __init__(self, bundle: Bundle) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(bundle.file(TOKENIZER)))
        self.max_len = int(bundle.preprocessing["max_len"])

    def encode(self, text: str, field: str) -> list[int]:
        ids = self.tokenizer.encode(text).ids
        if len(ids) > self.max_len:
            raise InvalidInputError(
                f"{field} is {len(ids)} tokens long; the model accepts at most {self.max_len}"
            )
        return ids


class TextService(ModelService[ClassifyItem, list[int], np.ndarray, dict[str, Any]]):
    """Texts → language labels (batched ONNX); code → summary; attention maps as PNG."""

    name = "text"
    registered_model = "text-classify"
    router = router

    def load(self, bundle: Bundle, variant: str, settings: ServingSettings) -> None:
        self.bundle = bundle
        self.variant = variant
        self.labels = bundle.labels
        self.options = TextSettings()
        self.classifier = OnnxModel.from_bundle(bundle, variant, settings.intra_op_threads())
        self.tokens = Tokens(bundle)
        self.generation: Generation | None = None
        if self.options.generate_model_uri:  # empty: classify only, and no torch needed
            self.generation = Generation(
                fetch(self.options.generate_model_uri, settings.model_cache_dir),
                settings.intra_op_threads(),
                self.options,
            )
        self.timeout_s = settings.request_timeout_s
        self._attention_model: Any = None
        self._attention_lock = threading.Lock()

    def warmup(self) -> None:
        self.classifier.smoke_test(self.bundle, self.variant)
        if self.generation is not None:
            self.generation.warmup()

    def describe(self) -> dict[str, Any]:
        return {
            "task": "text",
            "labels": self.labels,
            "variants": sorted(self.bundle.variants),
            "max_tokens": self.tokens.max_len,
            "max_chars": self.options.max_chars,
            "generate": self.generation.describe() if self.generation else None,
        }

    # ---- classify (through the shared batcher) --------------------------------------------
    def preprocess(self, request: ClassifyItem) -> list[int]:
        field = f"texts[{request.index}]"
        check_text(request.text, field, self.options.max_chars)
        if request.top_k > len(self.labels):
            raise InvalidParameterError(f"top_k must be between 1 and {len(self.labels)}")
        return self.tokens.encode(request.text, field)

    def predict(self, items: list[list[int]]) -> list[np.ndarray]:
        """Logits per text; the batch is right-padded (the model ignores padding)."""
        width = max(len(ids) for ids in items)
        batch = np.zeros((len(items), width), dtype=np.int64)
        for row, ids in enumerate(items):
            batch[row, : len(ids)] = ids
        return list(self.classifier.run({"input": batch})[0])

    def postprocess(self, output: np.ndarray, request: ClassifyItem) -> dict[str, Any]:
        shifted = np.exp(output - output.max())
        scores = shifted / shifted.sum()
        order = np.argsort(-scores, kind="stable")[: request.top_k]
        top = [{"label": self.labels[i], "score": float(scores[i])} for i in order]
        return {**top[0], "top_k": top}

    # ---- attention maps (PyTorch, from the bundle's safetensors) ---------------------------
    def require_generation(self) -> Generation:
        if self.generation is None:
            raise ModelNotReadyError("generation is off here (TEXT_GENERATE_MODEL_URI is empty)")
        return self.generation

    def attention(self, request: AttentionRequest) -> bytes:
        """The chosen layer/head's self-attention over the text's tokens, as a PNG."""
        try:
            import torch
        except ImportError as exc:  # a classify-only install (the serve extra has no torch)
            raise ModelNotReadyError("attention maps need PyTorch, not installed here") from exc

        from training.models.text import load_text_bundle
        from training.text_eval import attention_png

        check_text(request.text, "text", self.options.max_chars)
        ids = self.tokens.encode(request.text, "text")
        with self._attention_lock:
            if self._attention_model is None:
                self._attention_model = load_text_bundle(self.bundle)
            with torch.inference_mode():
                maps = self._attention_model.attention_maps(torch.tensor([ids]))
        layers, heads = len(maps), maps[0].size(1)
        if not -layers <= request.layer < layers or request.head >= heads:
            raise InvalidParameterError(
                f"layer must be in [{-layers}, {layers - 1}] and head in [0, {heads - 1}]"
            )
        tokens = [self.tokens.tokenizer.id_to_token(i) for i in ids]
        return attention_png(maps[request.layer][0, request.head].numpy(), tokens, tokens)


class Generation:
    """The summarization model: one generation at a time, a bounded wait, a deadline per token."""

    def __init__(self, fetched: FetchedModel, threads: int, options: TextSettings) -> None:
        import torch

        from training.models.decoding import recorded_rules
        from training.models.text import TextConfig, load_text_bundle
        from training.models.text_onnx import OnnxSeq2Seq

        torch.set_num_threads(threads)
        bundle = self.bundle = fetched.bundle
        variant = bundle.variant_name(options.generate_variant or None)
        self.info = {"name": fetched.name, "version": fetched.version, "variant": variant}
        if variant == "onnx":
            config = TextConfig.from_dict(bundle.manifest["architecture"])
            self.model: Any = OnnxSeq2Seq(bundle.path, config, threads)
        else:
            self.model = load_text_bundle(bundle)
        self.tokens = Tokens(bundle)
        # the model's view of a text, exactly as training prepared its inputs
        self.input_format = str(bundle.preprocessing.get("input_format", RAW_INPUT))
        code_input("def f(): pass", self.input_format)  # an unknown format fails the load
        self.rules = recorded_rules(bundle.manifest)  # decoded as the model was evaluated
        self.options = options
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="text-generate")
        self.waiting = 0
        self._count_lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        source = self.bundle.manifest.get("source", {})
        return {**self.info, "source": source, "max_tokens": self.tokens.max_len}

    def warmup(self) -> None:
        """The bundle's smoke cases must decode to the tokens PyTorch gave them at export."""
        from training.models.decoding import reproduces

        smoke = self.bundle.manifest.get("smoke_test")
        if smoke is None:
            raise BundleError(f"{self.bundle.name} has no smoke test; export it first")
        if not reproduces(self.model, json.loads(self.bundle.file(smoke).read_text())):
            raise BundleError(
                f"smoke test failed: the {self.info['variant']} variant's tokens differ "
                "from those recorded at export"
            )

    def admit(self) -> None:
        """Count a waiting generation or refuse it (503) when too many already wait."""
        with self._count_lock:
            if self.waiting >= self.options.max_waiting_generations:
                raise OverloadedError("too many generations are waiting; retry shortly")
            self.waiting += 1

    def release(self) -> None:
        with self._count_lock:
            self.waiting -= 1

    def prepare(self, request: GenerateRequest) -> list[int]:
        """Checked source token ids (a 4xx before anything queues)."""
        check_text(request.text, "text", self.options.max_chars)
        return self.tokens.encode(code_input(request.text, self.input_format), "text")

    def run(
        self,
        request: GenerateRequest,
        deadline: float,
        on_text: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Decode one request; `on_text` gets each new piece of text as its token is chosen."""
        from training.models.decoding import DecodeOptions, generate

        src = self.prepare(request)
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        options = DecodeOptions(
            strategy=request.strategy,
            max_new_tokens=request.max_new_tokens,
            num_beams=request.num_beams,
            temperature=request.temperature,
            top_k=request.top_k,
            top_p=request.top_p,
            seed=seed,
            **self.rules,
        )
        ids: list[int] = []
        sent = [""]
        decode = self.tokens.tokenizer.decode

        def on_token(token: int) -> None:
            if time.time() > deadline:
                raise DeadlineExceededError("the request timeout passed during generation")
            ids.append(token)
            text = decode(ids)
            if on_text is not None and not text.endswith("\ufffd") and len(text) > len(sent[0]):
                on_text(text[len(sent[0]) :])
                sent[0] = text

        started = time.perf_counter()
        tokens = generate(self.model, src, options, on_token)
        seconds = time.perf_counter() - started
        text = decode(tokens)
        if on_text is not None and len(text) > len(sent[0]):
            on_text(text[len(sent[0]) :])
        return {
            "text": text,
            "tokens": len(tokens),
            "seed": seed if request.strategy == "sample" else None,
            "timing_ms": {
                "generate": seconds * 1000,
                "tokens_per_s": len(tokens) / seconds if seconds > 0 else 0.0,
            },
        }
