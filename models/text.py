"""The text models: an encoder-only classifier and an encoder-decoder, built on `attention.py`.

Both share one token vocabulary (a BPE `tokenizer.json`), id 0 is padding, and the padding mask
is derived from the ids inside the model, so the exported classifier has a single input. A
`<task>-torch` bundle carries safetensors weights, the config as JSON and the tokenizer.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from models.attention import (
    KV,
    DecoderBlock,
    EncoderBlock,
    causal_mask,
    make_norm,
    padding_mask,
    positional_encoding,
)
from models.text_input import RAW_INPUT
from shared.bundle import Bundle, write_manifest

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
WEIGHTS_FILE = "weights.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TORCH_VARIANT = "torch"


@dataclass(frozen=True)
class TextConfig:
    """Architecture of a text model; stored in the bundle manifest as `architecture`."""

    kind: str  # "classifier" or "seq2seq"
    vocab_size: int
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    decoder_layers: int = 2
    d_ff: int = 128
    max_len: int = 256  # longest input (encoder) sequence
    max_target_len: int = 512  # decoder positions: the longest generation plus BOS
    dropout: float = 0.1
    positional: str = "sinusoidal"
    num_classes: int = 0
    norm: str = "layer"  # encoder blocks: layer | batch | rms (the normalization study)
    pre_norm: bool = True  # encoder blocks: pre-LN (shipped) or post-LN

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class Embedder(nn.Module):
    """Token embedding scaled by sqrt(d_model) plus positions."""

    def __init__(self, config: TextConfig, max_len: int | None = None) -> None:
        super().__init__()
        self.tokens = nn.Embedding(config.vocab_size, config.d_model, padding_idx=PAD_ID)
        # unit-variance inputs after the sqrt(d) scale, and small logits through the tied head
        nn.init.normal_(self.tokens.weight, std=config.d_model**-0.5)
        with torch.no_grad():
            self.tokens.weight[PAD_ID].zero_()
        length = max_len or config.max_len
        self.positions = positional_encoding(config.positional, config.d_model, length)
        self.scale = math.sqrt(config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, ids: Tensor, offset: int | Tensor = 0) -> Tensor:
        return self.dropout(self.positions(self.tokens(ids) * self.scale, offset))


class Encoder(nn.Module):
    """Embeddings, a stack of encoder blocks, a final norm (pre-LN only)."""

    def __init__(self, config: TextConfig, embed: Embedder) -> None:
        super().__init__()
        self.embed = embed
        args = (config.d_model, config.heads, config.d_ff, config.dropout, config.norm)
        self.blocks = nn.ModuleList(
            EncoderBlock(*args, pre_norm=config.pre_norm) for _ in range(config.layers)
        )
        # post-LN blocks end normalized already; pre-LN needs the final norm
        self.norm = make_norm(config.norm, config.d_model) if config.pre_norm else nn.Identity()

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """(states, padding mask, attention weights of every layer)."""
        mask = padding_mask(ids, PAD_ID)
        x = self.embed(ids)
        maps = []
        for block in self.blocks:
            x, weights = block(x, mask)
            maps.append(weights)
        return self.norm(x), mask, maps


class TextClassifier(nn.Module):
    """Encoder → mean over real tokens → linear head: ids (batch, time) → logits."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, Embedder(config))
        self.head = nn.Linear(config.d_model, config.num_classes)

    def forward(self, ids: Tensor) -> Tensor:
        states, mask, _ = self.encoder(ids)
        keep = mask[:, 0, 0, :].unsqueeze(-1).to(states.dtype)
        pooled = (states * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.head(pooled)

    def attention_maps(self, ids: Tensor) -> list[Tensor]:
        """Per layer (batch, heads, time, time) self-attention weights."""
        return self.encoder(ids)[2]


@dataclass
class Memory:
    """What the decoder needs from the encoder: per-layer cross keys/values and the mask."""

    kv: list[KV]
    mask: Tensor
    maps: list[Tensor]


class Seq2Seq(nn.Module):
    """Encoder-decoder with cross-attention; shared, tied token embeddings."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        embed = Embedder(config)
        self.encoder = Encoder(config, embed)
        self.decoder_embed = Embedder(config, config.max_target_len)
        self.decoder_embed.tokens = embed.tokens  # one vocabulary, one table
        args = (config.d_model, config.heads, config.d_ff, config.dropout)
        self.decoder = nn.ModuleList(DecoderBlock(*args) for _ in range(config.decoder_layers))
        self.norm = nn.LayerNorm(config.d_model)

    def encode(self, src: Tensor) -> Memory:
        states, mask, maps = self.encoder(src)
        kv = [block.cross_attn.project_kv(states) for block in self.decoder]
        return Memory(kv, mask, maps)

    def decode(
        self, tokens: Tensor, memory: Memory, past: list[KV] | None = None
    ) -> tuple[Tensor, list[KV], list[Tensor]]:
        """Logits for `tokens` given what was decoded before (`past`, the KV cache).

        Returns (logits, the extended cache, cross-attention weights per layer).
        """
        seen = 0 if past is None else past[0][0].size(2)
        x = self.decoder_embed(tokens, seen)
        mask = causal_mask(tokens.size(1), seen + tokens.size(1), tokens.device)
        presents, maps = [], []
        for i, block in enumerate(self.decoder):
            layer_past = None if past is None else past[i]
            x, present, weights = block(x, memory.kv[i], mask, memory.mask, layer_past)
            presents.append(present)
            maps.append(weights)
        logits = self.norm(x) @ self.decoder_embed.tokens.weight.T
        return logits, presents, maps

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (batch, time, vocab)."""
        return self.decode(tgt_in, self.encode(src))[0]


def build_model(config: TextConfig) -> nn.Module:
    if config.kind == "classifier":
        return TextClassifier(config)
    if config.kind == "seq2seq":
        return Seq2Seq(config)
    raise ValueError(f"unknown text model kind {config.kind!r}")


def freeze(model: nn.Module, part: str | None) -> int:
    """Stop training the embeddings or the whole encoder; returns trainable parameter count."""
    frozen: list[nn.Module] = []
    if part == "embeddings":
        frozen = [model.encoder.embed]  # type: ignore[list-item]
    elif part == "encoder":
        frozen = [model.encoder]  # type: ignore[list-item]
    elif part:
        raise ValueError(f"--freeze {part!r}: encoder or embeddings")
    for module in frozen:
        module.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def write_text_bundle(
    directory: Path,
    model: nn.Module,
    config: TextConfig,
    tokenizer_file: Path,
    input_format: str = RAW_INPUT,
    **manifest: Any,
) -> dict[str, Any]:
    """A `<task>-torch` bundle: safetensors weights, the tokenizer and the config (no pickles).

    `input_format` names how a text becomes the model's input (`text_input.code_input`), so the
    service prepares requests exactly as training prepared the data.
    """
    # clones: safetensors refuses tensors that share storage (the tied embedding)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    if tokenizer_file.resolve() != (directory / TOKENIZER_FILE).resolve():
        shutil.copyfile(tokenizer_file, directory / TOKENIZER_FILE)
    return write_manifest(
        directory,
        {
            "default_variant": TORCH_VARIANT,
            "variants": {TORCH_VARIANT: {"file": WEIGHTS_FILE, "format": "safetensors"}},
            "architecture": config.to_dict(),
            "torch_weights": WEIGHTS_FILE,
            "preprocessing": {
                "tokenizer": TOKENIZER_FILE,
                "pad_id": PAD_ID,
                "bos_id": BOS_ID,
                "eos_id": EOS_ID,
                "max_len": config.max_len,
                "input_format": input_format,
            },
            **manifest,
        },
    )


def load_text_bundle(bundle: Bundle) -> nn.Module:
    """Rebuild the model from the manifest's config and its safetensors weights, in eval mode."""
    config = TextConfig.from_dict(bundle.manifest["architecture"])
    model = build_model(config)
    model.load_state_dict(load_file(str(bundle.file(bundle.manifest["torch_weights"]))))
    return model.eval()
