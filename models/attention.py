"""Attention from first principles: scaled dot-product and multi-head attention, masks,
positional encodings, encoder/decoder blocks (pre-LN by default; post-LN, BatchNorm and RMSNorm
for the normalization study) and a key/value cache.

Written out rather than taken from `torch.nn.MultiheadAttention` so every step (masking, the
softmax, the cache that makes incremental decoding linear per token) is visible and exportable;
`tests/unit/test_text_attention.py` checks it against torch's own kernels.

Masks are boolean and broadcast to (batch, heads, query, key): True means "may attend", the
same convention as `F.scaled_dot_product_attention`'s boolean `attn_mask`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# A layer's cache: (keys, values), each (batch, heads, seen, head_dim).
KV = tuple[Tensor, Tensor]


def scaled_dot_product_attention(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """softmax(QK^T / sqrt(d) + mask) V; returns (output, attention weights).

    A fully masked row (a query that may see nothing) yields zeros, not NaN.
    """
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    return weights @ value, weights


def causal_mask(
    queries: int, keys: int | None = None, device: torch.device | None = None
) -> Tensor:
    """(queries, keys) lower-triangular mask; with a cache the queries are the last positions."""
    keys = queries if keys is None else keys
    offset = keys - queries
    rows = torch.arange(queries, device=device).unsqueeze(1) + offset
    return torch.arange(keys, device=device).unsqueeze(0) <= rows


def padding_mask(ids: Tensor, pad_id: int) -> Tensor:
    """(batch, 1, 1, keys): True at real tokens, so no query attends to padding."""
    return (ids != pad_id)[:, None, None, :]


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections and an optional KV cache."""

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = d_model // heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def split(self, x: Tensor) -> Tensor:
        """(batch, time, d_model) → (batch, heads, time, head_dim)."""
        batch, time, _ = x.shape
        return x.view(batch, time, self.heads, self.head_dim).transpose(1, 2)

    def project_kv(self, memory: Tensor) -> KV:
        """Keys and values of `memory` (cross-attention computes them once per sequence)."""
        return self.split(self.k_proj(memory)), self.split(self.v_proj(memory))

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        mask: Tensor | None = None,
        past: KV | None = None,
        static_kv: KV | None = None,
    ) -> tuple[Tensor, Tensor, KV]:
        """Attend from `query` to `key` (self-attention when None).

        `past` holds earlier keys/values of self-attention, extended by this call; `static_kv`
        are precomputed cross-attention keys/values. Returns (output, weights, keys/values).
        """
        q = self.split(self.q_proj(query))
        if static_kv is not None:
            k, v = static_kv
        else:
            k, v = self.project_kv(query if key is None else key)
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        out, weights = scaled_dot_product_attention(q, k, v, mask)
        batch, _, time, _ = out.shape
        out = out.transpose(1, 2).reshape(batch, time, self.heads * self.head_dim)
        return self.dropout(self.out_proj(out)), weights, (k, v)


class SinusoidalPositions(nn.Module):
    """Fixed sin/cos positional encodings (Vaswani et al.), added to the embeddings."""

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        freq = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        table = torch.zeros(max_len, d_model)
        table[:, 0::2] = torch.sin(position * freq)
        table[:, 1::2] = torch.cos(position * freq[: d_model // 2])
        self.register_buffer("table", table, persistent=False)

    def forward(self, x: Tensor, offset: int | Tensor = 0) -> Tensor:
        return x + self.table[offset : offset + x.size(1)]


class LearnedPositions(nn.Module):
    """A trained embedding per position."""

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        self.table = nn.Embedding(max_len, d_model)

    def forward(self, x: Tensor, offset: int | Tensor = 0) -> Tensor:
        positions = torch.arange(x.size(1), device=x.device) + offset
        return x + self.table(positions)


def positional_encoding(kind: str, d_model: int, max_len: int) -> nn.Module:
    if kind == "sinusoidal":
        return SinusoidalPositions(d_model, max_len)
    if kind == "learned":
        return LearnedPositions(d_model, max_len)
    raise ValueError(f"unknown positional encoding {kind!r}: sinusoidal or learned")


class FeedForward(nn.Sequential):
    """Position-wise two-layer MLP with GELU."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model)
        )


NORMS = ("layer", "batch", "rms")


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over (batch, time) per feature: statistics across the whole batch, padding
    included, which is what the LayerNorm-vs-BatchNorm comparison is about."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def make_norm(kind: str, d_model: int) -> nn.Module:
    """LayerNorm (the default), BatchNorm over tokens or RMSNorm."""
    if kind == "layer":
        return nn.LayerNorm(d_model)
    if kind == "batch":
        return TokenBatchNorm(d_model)
    if kind == "rms":
        return nn.RMSNorm(d_model)
    raise ValueError(f"unknown norm {kind!r}: one of {', '.join(NORMS)}")


class EncoderBlock(nn.Module):
    """Self-attention then feed-forward, each residual: pre-LN x + f(norm(x)) (the default, as
    trained and shipped), or post-LN norm(x + f(x)) (the original Transformer's order)."""

    def __init__(
        self,
        d_model: int,
        heads: int,
        d_ff: int,
        dropout: float,
        norm: str = "layer",
        pre_norm: bool = True,
    ) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.norm1 = make_norm(norm, d_model)
        self.attn = MultiHeadAttention(d_model, heads, dropout)
        self.norm2 = make_norm(norm, d_model)
        self.ff = FeedForward(d_model, d_ff, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.pre_norm:
            attended, weights, _ = self.attn(self.norm1(x), mask=mask)
            x = x + attended
            return x + self.dropout(self.ff(self.norm2(x))), weights
        attended, weights, _ = self.attn(x, mask=mask)
        x = self.norm1(x + attended)
        return self.norm2(x + self.dropout(self.ff(x))), weights


class DecoderBlock(nn.Module):
    """Pre-LN: causal self-attention (cached), cross-attention to the encoder, feed-forward."""

    def __init__(self, d_model: int, heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.cross_attn = MultiHeadAttention(d_model, heads, dropout)
        self.norm3 = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model, d_ff, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        memory_kv: KV,
        self_mask: Tensor | None,
        memory_mask: Tensor | None,
        past: KV | None = None,
    ) -> tuple[Tensor, KV, Tensor]:
        """Returns (output, this layer's extended self-attention cache, cross-attention weights)."""
        attended, _, present = self.self_attn(self.norm1(x), mask=self_mask, past=past)
        x = x + attended
        crossed, weights, _ = self.cross_attn(self.norm2(x), mask=memory_mask, static_kv=memory_kv)
        x = x + crossed
        return x + self.dropout(self.ff(self.norm3(x))), present, weights


def torch_mha_state(attn: MultiHeadAttention) -> dict[str, Tensor]:
    """The same weights laid out for `torch.nn.MultiheadAttention` (parity tests, reference)."""
    return {
        "in_proj_weight": torch.cat(
            [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]
        ).detach(),
        "in_proj_bias": torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]).detach(),
        "out_proj.weight": attn.out_proj.weight.detach(),
        "out_proj.bias": attn.out_proj.bias.detach(),
    }
