"""The attention-map picture and per-head entropy, for the training job, the attention study
and the text service alike.

Drawn with Pillow only, so the service draws it without matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from shared.media import encode_png

CELL_PX = 18
LABEL_PX = 90


def attention_png(weights: np.ndarray, queries: Sequence[str], keys: Sequence[str]) -> bytes:
    """A (queries x keys) attention matrix as a labelled heat map (dark = low, yellow = high)."""
    weights = np.asarray(weights, dtype=np.float32)
    rows, cols = weights.shape
    peak = float(weights.max()) or 1.0
    level = np.clip(weights / peak, 0, 1)
    # a simple dark-blue → yellow ramp; no colormap library needed
    rgb = np.stack([level * 250, 40 + level * 200, 120 * (1 - level) + 20], axis=-1)
    heat = Image.fromarray(rgb.astype(np.uint8)).resize(
        (cols * CELL_PX, rows * CELL_PX), Image.Resampling.NEAREST
    )
    canvas = Image.new("RGB", (LABEL_PX + cols * CELL_PX, LABEL_PX + rows * CELL_PX), "white")
    canvas.paste(heat, (LABEL_PX, LABEL_PX))
    draw = ImageDraw.Draw(canvas)
    for i, token in enumerate(queries):
        draw.text((2, LABEL_PX + i * CELL_PX + 3), _label(token), fill="black")
    column = Image.new("RGB", (LABEL_PX, CELL_PX), "white")
    for j, token in enumerate(keys):
        tile = column.copy()
        ImageDraw.Draw(tile).text((2, 3), _label(token), fill="black")
        canvas.paste(tile.rotate(90, expand=True), (LABEL_PX + j * CELL_PX, 0))
    return encode_png(canvas)


def head_entropy(weights: np.ndarray) -> np.ndarray:
    """Mean entropy (nats) of each head's attention rows: (heads, queries, keys) → (heads,).

    0 is a head that looks at one token; log(keys) one that spreads evenly (no preference).
    """
    weights = np.asarray(weights, dtype=np.float64)
    logs = np.log(np.where(weights > 0, weights, 1.0))
    return -(weights * logs).sum(-1).mean(-1)


def _label(token: str) -> str:
    """Token text a bitmap font can draw: byte-level markers made readable, at most 12 chars."""
    text = token.replace("Ġ", "_").replace("Ċ", "\\n")
    text = text.encode("ascii", "replace").decode()
    return text[:12]
