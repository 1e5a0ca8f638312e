"""Image encoding with provenance: PNG text chunks (or a JPEG comment) name params and model."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

SOFTWARE = "modelplane generate"
PREVIEW_SIDE = 32


def provenance(params: dict[str, Any], model: dict[str, str], seed: int) -> dict[str, str]:
    """The text a generated image carries: its parameters, its seed and the model."""
    return {
        "Software": SOFTWARE,
        "parameters": json.dumps({**params, "seed": seed}, sort_keys=True),
        "seed": str(seed),
        "model": json.dumps(model, sort_keys=True),
    }


def encode_image(
    pixels: np.ndarray, params: dict[str, Any], model: dict[str, str], seed: int, fmt: str
) -> bytes:
    """PNG with tEXt chunks, or JPEG (quality 95) with the same text in its comment segment."""
    image = Image.fromarray(pixels)
    text = provenance(params, model, seed)
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=95, comment=json.dumps(text, sort_keys=True))
    else:
        info = PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
        image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def preview_png(pixels: np.ndarray) -> bytes:
    """A small PNG of an intermediate sample (at most PREVIEW_SIDE on its longer side)."""
    image = Image.fromarray(pixels)
    if max(image.size) > PREVIEW_SIDE:
        image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
