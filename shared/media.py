"""Safe image decoding and the preprocessing shared by training and serving.

Training builds every example with `image_to_array`, the same function a service runs on a
request, so the served model sees exactly what it was trained and exported on.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from shared.errors import InvalidInputError, PayloadTooLargeError

IMAGE_MEDIA_TYPES = frozenset({"image/png", "image/jpeg"})
_FORMATS = ("PNG", "JPEG")


@dataclass(frozen=True)
class ImageSpec:
    """How a model wants its images: size, channels, normalization."""

    height: int
    width: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_manifest(cls, pre: dict[str, Any]) -> ImageSpec:
        height, width = (int(v) for v in pre["size"])
        return cls(height, width, int(pre["channels"]), tuple(pre["mean"]), tuple(pre["std"]))

    def to_manifest(self) -> dict[str, Any]:
        return {
            "size": [self.height, self.width],
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": "bilinear",
            "scale": "1/255",
        }


def decode_base64(data: str, field: str = "image") -> bytes:
    """Strict base64 (an optional `data:...;base64,` prefix is allowed)."""
    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInputError(f"{field} is not valid base64: {exc}") from exc


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode PNG/JPEG bytes; the pixel count is checked from the header before decoding."""
    if not data:
        raise InvalidInputError("the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise PayloadTooLargeError(
                    f"the image is {width}x{height} = {width * height} pixels; "
                    f"the limit is {max_pixels}"
                )
            image.load()
    except PayloadTooLargeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLargeError(f"the image is too large to decode: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidInputError("the data is not a PNG or JPEG image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInputError(
            f"the image could not be decoded (truncated or corrupt): {exc}"
        ) from exc
    return image


def image_to_array(image: Image.Image, spec: ImageSpec) -> np.ndarray:
    """Grayscale, bilinear resize, scale to [0, 1], repeat channels, normalize: (C, H, W)."""
    gray = image.convert("L")
    if gray.size != (spec.width, spec.height):
        gray = gray.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
    plane = np.asarray(gray, dtype=np.float32) * np.float32(1.0 / 255.0)
    stacked = np.repeat(plane[None, :, :], spec.channels, axis=0)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((stacked - mean) / std, dtype=np.float32)


def gray_to_image(pixels: np.ndarray) -> Image.Image:
    """A uint8 (H, W) array as a grayscale PIL image."""
    return Image.fromarray(np.asarray(pixels, dtype=np.uint8))


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
