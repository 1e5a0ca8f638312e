"""Decoding for the encoder-decoder: greedy, beam search and sampling, with or without KV cache.

Used by training (evaluation), the benchmark and the text service alike, so the service's
tokens are the PyTorch reference's tokens. `on_token` sees each token as soon as it is chosen
(streaming); beam search only knows its answer at the end and reports it then. Every rule that
shapes the choice (tokens never generated, `no_repeat_ngram`) acts on the logits here, so the
PyTorch and ONNX engines decode identically. Tensors live on the model's device (CUDA in
training when there is one; the ONNX engine and the service are CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from models.attention import KV
from models.text import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Memory, Seq2Seq

STRATEGIES = ("greedy", "beam", "sample")
NEVER = torch.tensor([PAD_ID, BOS_ID, UNK_ID])


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode; the service bounds every field before it gets here."""

    strategy: str = "greedy"
    max_new_tokens: int = 32
    num_beams: int = 4
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    use_cache: bool = True
    length_penalty: float = 1.0
    stop_at_eos: bool = True  # False: always max_new_tokens (benchmarks)
    no_repeat_ngram: int = 0  # n > 0: never generate an n-gram already generated (0 = off)


def repeated_ngram_tokens(tokens: list[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already in `tokens` (what no_repeat_ngram bans)."""
    if n <= 0 or len(tokens) < n:
        return []
    tail = tokens[len(tokens) - n + 1 :] if n > 1 else []
    return [tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tokens[i : i + n - 1] == tail]


# decoding rules a bundle records (manifest "decoding") and the service applies to every request
RECORDED = ("no_repeat_ngram",)


def recorded_rules(manifest: dict[str, Any]) -> dict[str, int]:
    """The decoding rules the model was evaluated with (its manifest's `decoding`), so served
    summaries are decoded as the reported figures were; unknown rules refuse the bundle."""
    rules = dict(manifest.get("decoding", {}))
    unknown = sorted(set(rules) - set(RECORDED))
    if unknown:
        raise ValueError(f"the bundle's decoding rules {unknown} are unknown here")
    return {key: int(value) for key, value in rules.items()}


def model_device(model: object) -> torch.device:
    """Where a PyTorch model's weights are; the CPU for the ONNX engine (no parameters)."""
    parameters = getattr(model, "parameters", None)
    first = next(parameters(), None) if callable(parameters) else None
    return first.device if first is not None else torch.device("cpu")


class _Stepper:
    """Next-token logits for a batch of prefixes; with the cache only the last token is fed."""

    def __init__(self, model: Seq2Seq, memory: Memory, options: DecodeOptions) -> None:
        self.model = model
        self.memory = memory
        self.use_cache = options.use_cache
        self.no_repeat = options.no_repeat_ngram
        self.past: list[KV] | None = None

    def __call__(self, prefix: Tensor) -> Tensor:
        if not self.use_cache:
            logits = self.model.decode(prefix, self.memory)[0][:, -1]
        else:
            new = prefix if self.past is None else prefix[:, -1:]
            logits, self.past, _ = self.model.decode(new, self.memory, self.past)
            logits = logits[:, -1]
        # tokens no summary contains
        logits = logits.index_fill(-1, NEVER.to(logits.device), float("-inf"))
        if self.no_repeat > 0:
            for row, tokens in enumerate(prefix[:, 1:].tolist()):
                banned = repeated_ngram_tokens(tokens, self.no_repeat)
                if banned:
                    logits[row, banned] = float("-inf")
        return logits

    def reorder(self, rows: Tensor) -> None:
        """Keep the cache rows of the surviving beams."""
        if self.past is not None:
            self.past = [(k[rows], v[rows]) for k, v in self.past]


def expand(memory: Memory, rows: int) -> Memory:
    """The encoder output repeated for `rows` beams."""
    index = torch.zeros(rows, dtype=torch.long, device=memory.mask.device)
    return Memory([(k[index], v[index]) for k, v in memory.kv], memory.mask[index], memory.maps)


def filter_logits(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Keep the top-k tokens and the smallest set whose probability reaches top_p."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(ordered, -1).cumsum(-1)
        drop = cumulative - torch.softmax(ordered, -1) >= top_p
        drop[..., 0] = False  # the likeliest token always stays (a top_p that rounds to 0 too)
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.inference_mode()
def generate(
    model: Seq2Seq,
    src: list[int],
    options: DecodeOptions,
    on_token: Callable[[int], None] | None = None,
) -> list[int]:
    """Token ids generated for one source sequence (without BOS/EOS)."""
    limit = model.config.max_target_len - 1  # the decoder has no positions beyond this
    options = replace(options, max_new_tokens=min(options.max_new_tokens, limit))
    memory = model.encode(torch.tensor([src], dtype=torch.long, device=model_device(model)))
    if options.strategy == "beam":
        tokens = beam_search(model, memory, options)
        for token in tokens:
            if on_token is not None:
                on_token(token)
        return tokens
    return _left_to_right(model, memory, options, on_token)


def _left_to_right(
    model: Seq2Seq, memory: Memory, options: DecodeOptions, on_token: Callable[[int], None] | None
) -> list[int]:
    step = _Stepper(model, memory, options)
    generator = torch.Generator().manual_seed(options.seed)
    prefix = torch.tensor([[BOS_ID]], device=memory.mask.device)
    out: list[int] = []
    for _ in range(options.max_new_tokens):
        logits = step(prefix)[0]
        if options.strategy == "sample":
            scaled = filter_logits(logits / options.temperature, options.top_k, options.top_p)
            # drawn on the CPU with a CPU generator: the same tokens whatever the device
            probs = torch.softmax(scaled.float(), -1).cpu()
            token = int(torch.multinomial(probs, 1, generator=generator))
        else:
            token = int(logits.argmax())
        if token == EOS_ID and options.stop_at_eos:
            break
        out.append(token)
        if on_token is not None:
            on_token(token)
        prefix = torch.cat([prefix, prefix.new_tensor([[token]])], dim=1)
    return out


def beam_search(model: Seq2Seq, memory: Memory, options: DecodeOptions) -> list[int]:
    """Beam search with length-normalized scores; one beam is exactly greedy decoding."""
    beams = options.num_beams
    step = _Stepper(model, memory, options)
    device = memory.mask.device
    prefix = torch.tensor([[BOS_ID]], device=device)
    scores = torch.zeros(1, device=device)
    finished: list[tuple[float, list[int]]] = []
    for _ in range(options.max_new_tokens):
        step.memory = expand(memory, prefix.size(0))
        logprobs = torch.log_softmax(step(prefix).float(), -1)
        candidates = (scores[:, None] + logprobs).flatten()
        top = torch.topk(candidates, min(2 * beams, candidates.numel()))
        rows, keep = [], []
        for score, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            row, token = divmod(flat, logprobs.size(-1))
            if token == EOS_ID:
                tokens = prefix[row, 1:].tolist()
                finished.append((score / max(1, len(tokens)) ** options.length_penalty, tokens))
            else:
                rows.append(row)
                keep.append((score, token))
            if len(rows) == beams:
                break
        if len(finished) >= beams or not rows:
            break
        index = torch.tensor(rows, device=device)
        step.reorder(index)
        tokens = torch.tensor([[token] for _, token in keep], device=device)
        prefix = torch.cat([prefix[index], tokens], dim=1)
        scores = torch.tensor([score for score, _ in keep], device=device)
    if not finished:
        finished = [
            (float(s) / max(1, prefix.size(1) - 1) ** options.length_penalty, p[1:].tolist())
            for s, p in zip(scores, prefix, strict=True)
        ]
    return max(finished, key=lambda item: item[0])[1]


# The smoke cases a summarizer bundle records: greedy on each, beam and sampling on the first.
GREEDY = DecodeOptions(max_new_tokens=32)
CHECKS = (
    DecodeOptions("beam", max_new_tokens=24, num_beams=3),
    DecodeOptions("sample", max_new_tokens=24, seed=11, top_k=50, top_p=0.9),
)


def reproduces(engine: Seq2Seq, cases: list[dict]) -> bool:
    """Whether `engine` decodes the smoke cases to exactly the recorded tokens."""
    if any(generate(engine, case["src"], GREEDY) != case["greedy"] for case in cases):
        return False
    first = cases[0]
    return all(
        generate(engine, first["src"], o) == first[o.strategy]
        for o in CHECKS
        if o.strategy in first
    )
