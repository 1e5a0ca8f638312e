"""The summarization model: code in, a one-line summary out, token by token (KV cache).

Its tokens are the ones `models.decoding` gives the PyTorch reference, decoded by the rules
the bundle recorded at evaluation; each new token checks the deadline and the client.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from models.text_input import RAW_INPUT, code_input
from services.text.schemas import GenerateBody
from services.text.tokens import Tokens, check_text
from shared.bundle import Bundle
from shared.errors import BundleError
from shared.predlog import summarize_tokens
from shared.service import Call, ModelService


class TextGenerator(ModelService):
    """The summarizer: the PyTorch engine (`torch`) or the ONNX one (`onnx`)."""

    def load(self, bundle: Bundle, variant: str, settings: Any) -> None:
        import torch

        from models.decoding import recorded_rules
        from models.text import TextConfig, load_text_bundle
        from models.text_onnx import OnnxSeq2Seq

        torch.set_num_threads(settings.intra_op_threads())
        self.bundle = bundle
        self.variant = variant
        if variant == "onnx":
            config = TextConfig.from_dict(bundle.manifest["architecture"])
            self.model: Any = OnnxSeq2Seq(bundle.path, config, settings.intra_op_threads())
        else:
            self.model = load_text_bundle(bundle)
        self.tokens = Tokens(bundle)
        self.max_chars = settings.text_max_chars
        # the model's view of a text, exactly as training prepared its inputs
        self.input_format = str(bundle.preprocessing.get("input_format", RAW_INPUT))
        code_input("def f(): pass", self.input_format)  # an unknown format fails the load
        self.rules = recorded_rules(bundle.manifest)  # decoded as the model was evaluated

    def describe(self) -> dict[str, Any]:
        source = self.bundle.manifest.get("source", {})
        return {"source": source, "max_tokens": self.tokens.max_len}

    def warmup(self) -> None:
        """The bundle's smoke cases must decode to the tokens PyTorch gave them at export."""
        from models.decoding import reproduces

        smoke = self.bundle.manifest.get("smoke_test")
        if smoke is None:
            raise BundleError(f"{self.bundle.name} has no smoke test; export it first")
        if not reproduces(self.model, json.loads(self.bundle.file(smoke).read_text())):
            raise BundleError(
                f"smoke test failed: the {self.variant} variant's tokens differ "
                "from those recorded at export"
            )

    def prepare(self, body: GenerateBody) -> tuple[list[int], GenerateBody]:
        """Checked source token ids (a 4xx before anything queues); a sampled request without
        a seed gets one here, so a shadow run on the challenger samples with the same seed."""
        check_text(body.text, "text", self.max_chars)
        if body.strategy == "sample" and body.seed is None:
            body = body.model_copy(update={"seed": secrets.randbelow(2**31)})
        return self.tokens.encode(code_input(body.text, self.input_format), "text"), body

    #: shadow traffic compares this many leading words of the two summaries
    AGREEMENT_WORDS = 8

    def agreement(self, mine: dict[str, Any], theirs: dict[str, Any]) -> float:
        """Shadow traffic: 1 when both versions' summaries start with the same words."""
        words = self.AGREEMENT_WORDS
        return 1.0 if mine["text"].split()[:words] == theirs["text"].split()[:words] else 0.0

    def summarize_call(
        self, work: tuple[list[int], GenerateBody], output: dict[str, Any]
    ) -> dict[str, Any]:
        """The prediction log's item: the source tokens (hash, count), the decoding asked for,
        and the generated length."""
        src, body = work
        asked = {"strategy": body.strategy, "max_new_tokens": body.max_new_tokens}
        return {
            "input": {**summarize_tokens(src), **asked},
            "output": {
                "tokens": output["tokens"],
                "chars": len(output["text"]),
                "tokens_per_s": output["timing_ms"].get("tokens_per_s"),
            },
        }

    def summarize(self, work: tuple[list[int], GenerateBody], call: Call) -> dict[str, Any]:
        """Decode one request; a streaming client gets a `token` event per new piece of text."""
        from models.decoding import DecodeOptions, generate

        src, body = work
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
        options = DecodeOptions(
            strategy=body.strategy,
            max_new_tokens=body.max_new_tokens,
            num_beams=body.num_beams,
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=body.top_p,
            seed=seed,
            **self.rules,
        )
        ids: list[int] = []
        sent = {"text": "", "events": 0}
        decode = self.tokens.tokenizer.decode

        def send(text: str) -> None:
            done = str(sent["text"])
            if len(text) > len(done):
                call.emit("token", {"index": sent["events"], "text": text[len(done) :]})
                sent["text"], sent["events"] = text, int(sent["events"]) + 1

        def on_token(token: int) -> None:
            call.check(" during generation")
            ids.append(token)
            text = decode(ids)
            if call.streaming and not text.endswith("\ufffd"):
                send(text)

        started = time.perf_counter()
        tokens = generate(self.model, src, options, on_token)
        seconds = time.perf_counter() - started
        text = decode(tokens)
        if call.streaming:
            send(text)
        timing = {
            "generate": seconds * 1000,
            "tokens_per_s": len(tokens) / seconds if seconds > 0 else 0.0,
            "total": call.elapsed_ms(),
        }
        return {
            "text": text,
            "tokens": len(tokens),
            "seed": seed if body.strategy == "sample" else None,
            "timing_ms": {k: round(v, 2) for k, v in timing.items()},
        }
