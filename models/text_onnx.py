"""The summarizer as ONNX: an encoder graph and a decoder graph with the KV cache as inputs and
outputs, and `OnnxSeq2Seq`, which runs them behind the `encode`/`decode` interface that
`models.decoding` drives, so greedy, beam and sampling decode through either engine.

Graphs (every layer's tensors stacked on a leading layer axis):
- `encoder.onnx`: src (batch, src_len) int64 → cross_k, cross_v (layers, batch, heads, src_len,
  head_dim), mask (batch, 1, 1, src_len) int64.
- `decoder_init.onnx`: tokens (batch, time), cross_k, cross_v, mask → logits (batch, time,
  vocab), present_k, present_v (layers, batch, heads, time, head_dim).
- `decoder_step.onnx`: the same plus past_k, past_v (past length >= 1) → logits for the new
  tokens and the extended cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from models.attention import KV
from models.text import BOS_ID, Memory, Seq2Seq, TextConfig
from shared.onnx import session_options

ENCODER, DECODER_INIT, DECODER_STEP = "encoder.onnx", "decoder_init.onnx", "decoder_step.onnx"


class _Encoder(nn.Module):
    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        memory = self.model.encode(src)
        keys = torch.stack([k for k, _ in memory.kv])
        values = torch.stack([v for _, v in memory.kv])
        return keys, values, memory.mask.to(torch.int64)


class _Decoder(nn.Module):
    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        tokens: Tensor,
        cross_k: Tensor,
        cross_v: Tensor,
        mask: Tensor,
        past_k: Tensor | None = None,
        past_v: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        layers = range(cross_k.size(0))
        memory = Memory([(cross_k[i], cross_v[i]) for i in layers], mask.bool(), [])
        past = None
        if past_k is not None and past_v is not None:
            past = [(past_k[i], past_v[i]) for i in layers]
        logits, present, _ = self.model.decode(tokens, memory, past)
        return logits, torch.stack([k for k, _ in present]), torch.stack([v for _, v in present])


def export_graphs(model: Seq2Seq, out: Path, opset: int = 18) -> list[str]:
    """Write the three graphs into `out`; returns their file names."""
    model = model.eval()
    config = model.config
    batch = torch.export.Dim("batch", max=64)
    src_len = torch.export.Dim("src_len", max=config.max_len)
    src = torch.full((2, 7), 5, dtype=torch.long)
    common = {"dynamo": True, "external_data": False, "opset_version": opset, "verbose": False}
    torch.onnx.export(_Encoder(model), (src,), str(out / ENCODER), input_names=["src"],
                      output_names=["cross_k", "cross_v", "mask"],
                      dynamic_shapes=({0: batch, 1: src_len},), **common)  # fmt: skip
    with torch.no_grad():
        cross_k, cross_v, mask = _Encoder(model)(src)
        tokens = torch.full((2, 3), BOS_ID)
        _, past_k, past_v = _Decoder(model)(tokens, cross_k, cross_v, mask)
    time = torch.export.Dim("time", max=config.max_target_len)
    past = torch.export.Dim("past", min=1, max=config.max_target_len)
    cross = {1: batch, 3: src_len}
    names = ["tokens", "cross_k", "cross_v", "mask"]
    outputs = ["logits", "present_k", "present_v"]
    shapes = ({0: batch, 1: time}, cross, cross, {0: batch, 3: src_len})
    torch.onnx.export(_Decoder(model), (tokens, cross_k, cross_v, mask),
                      str(out / DECODER_INIT), input_names=names, output_names=outputs,
                      dynamic_shapes=shapes, **common)  # fmt: skip
    step = torch.full((2, 1), BOS_ID)
    torch.onnx.export(_Decoder(model), (step, cross_k, cross_v, mask, past_k, past_v),
                      str(out / DECODER_STEP), input_names=[*names, "past_k", "past_v"],
                      output_names=outputs, dynamic_shapes=(
                          {0: batch}, cross, cross, {0: batch, 3: src_len},
                          {1: batch, 3: past}, {1: batch, 3: past}), **common)  # fmt: skip
    return [ENCODER, DECODER_INIT, DECODER_STEP]


class OnnxSeq2Seq:
    """onnxruntime sessions of the three graphs, with Seq2Seq's `encode`/`decode` interface."""

    def __init__(self, directory: Path, config: TextConfig, threads: int) -> None:
        import onnxruntime as ort

        options = session_options(threads)

        def session(name: str) -> ort.InferenceSession:
            return ort.InferenceSession(
                str(directory / name), sess_options=options, providers=["CPUExecutionProvider"]
            )

        self.config = config
        self.encoder = session(ENCODER)
        self.init = session(DECODER_INIT)
        self.step = session(DECODER_STEP)
        self._cross_of: Memory | None = None
        self._cross_feeds: dict[str, np.ndarray] = {}

    def encode(self, src: Tensor) -> Memory:
        keys, values, mask = self.encoder.run(None, {"src": src.numpy()})
        kv = [(torch.from_numpy(k), torch.from_numpy(v)) for k, v in zip(keys, values, strict=True)]
        return Memory(kv, torch.from_numpy(mask).bool(), [])

    def _cross(self, memory: Memory) -> dict[str, np.ndarray]:
        """The encoder's stacked keys/values and mask as feeds, built once per Memory."""
        if self._cross_of is not memory:
            self._cross_feeds = {
                "cross_k": np.stack([k.numpy() for k, _ in memory.kv]),
                "cross_v": np.stack([v.numpy() for _, v in memory.kv]),
                "mask": memory.mask.numpy().astype(np.int64),
            }
            self._cross_of = memory
        return self._cross_feeds

    def decode(
        self, tokens: Tensor, memory: Memory, past: list[KV] | None = None
    ) -> tuple[Tensor, list[KV], list[Tensor]]:
        feeds = {"tokens": tokens.numpy(), **self._cross(memory)}
        if past is None:
            logits, keys, values = self.init.run(None, feeds)
        else:
            feeds["past_k"] = np.stack([k.numpy() for k, _ in past])
            feeds["past_v"] = np.stack([v.numpy() for _, v in past])
            logits, keys, values = self.step.run(None, feeds)
        present = [
            (torch.from_numpy(k), torch.from_numpy(v)) for k, v in zip(keys, values, strict=True)
        ]
        return torch.from_numpy(logits), present, []
