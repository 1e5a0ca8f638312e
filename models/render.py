"""PNG rendering: heatmaps over the input, side-by-side panels, feature-map and filter grids."""

from __future__ import annotations

import base64
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

from shared.media import encode_png

PANEL_TILE_PX = 160
GRID_TILE_PX = 48
_LABEL_PX = 14
_MAX_ALPHA = 0.7


@cache
def _colormap(name: str = "jet") -> np.ndarray:
    """(256, 3) uint8 lookup table of a matplotlib colormap."""
    from matplotlib import colormaps

    table = colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
    return (table * 255).round().astype(np.uint8)


def png_base64(image: Image.Image) -> str:
    return base64.b64encode(encode_png(image)).decode("ascii")


def magnitude(saliency: np.ndarray) -> np.ndarray:
    """|map| scaled to [0, 1] by its 99th percentile, so a few spikes do not wash out the rest
    (Captum's visualizations clip outliers the same way)."""
    values = np.abs(np.nan_to_num(saliency.astype(np.float32)))
    if not values.size:
        return values
    peak = float(np.percentile(values, 99))
    peak = peak if peak > 0 else float(values.max())
    return np.clip(values / peak, 0.0, 1.0) if peak > 0 else values


def overlay(image: Image.Image, saliency: np.ndarray) -> Image.Image:
    """|map| as a jet heatmap blended over the (grayscale) input, at the input's size.

    Opacity follows the attribution, so unattributed pixels keep the input visible.
    """
    heat = Image.fromarray(magnitude(saliency)).resize(image.size, Image.Resampling.BILINEAR)
    level = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    colors = _colormap()[np.round(level * 255).astype(np.uint8)].astype(np.float32)
    gray = np.asarray(image.convert("L"), dtype=np.float32)[..., None]
    alpha = (_MAX_ALPHA * level)[..., None]
    blended = (1 - alpha) * gray + alpha * colors
    return Image.fromarray(np.clip(blended, 0, 255).round().astype(np.uint8))


def _fit(image: Image.Image, side: int) -> Image.Image:
    """Scale to fit a `side` square (nearest when enlarging small digits, so pixels stay crisp)."""
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    method = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
    return image.convert("RGB").resize(size, method)


def panel(tiles: list[tuple[str, Image.Image]], side: int = PANEL_TILE_PX) -> Image.Image:
    """Titled tiles side by side: the input, then one overlay per method."""
    canvas = Image.new("RGB", (len(tiles) * (side + 4) + 4, side + _LABEL_PX + 8), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (title, tile) in enumerate(tiles):
        left = 4 + i * (side + 4)
        draw.text((left, 2), title[:26], fill="black")
        fitted = _fit(tile, side)
        canvas.paste(fitted, (left, _LABEL_PX + 4))
    return canvas


def plane_grid(
    planes: np.ndarray, titles: list[str], tile: int = GRID_TILE_PX, cols: int = 8
) -> Image.Image:
    """(K, h, w) planes, each min-max scaled, as a titled grayscale grid."""
    count = len(planes)
    cols = max(1, min(cols, count))
    rows = (count + cols - 1) // cols
    canvas = Image.new("L", (cols * (tile + 2) + 2, rows * (tile + _LABEL_PX + 2) + 2), 255)
    draw = ImageDraw.Draw(canvas)
    for k, plane in enumerate(planes.astype(np.float32)):
        low, high = float(plane.min()), float(plane.max())
        scaled = (plane - low) / (high - low) if high > low else np.zeros_like(plane)
        tile_image = Image.fromarray((scaled * 255).round().astype(np.uint8))
        left = 2 + (k % cols) * (tile + 2)
        top = 2 + (k // cols) * (tile + _LABEL_PX + 2)
        draw.text((left, top), titles[k][:8], fill=0)
        canvas.paste(
            tile_image.resize((tile, tile), Image.Resampling.NEAREST), (left, top + _LABEL_PX)
        )
    return canvas


def filter_grid(weights: np.ndarray) -> Image.Image:
    """A conv's filters (out, in, k, k) as the gray input sees them (summed over input channels,
    which are copies of one gray plane), one tile each."""
    planes = weights.sum(axis=1)
    return plane_grid(planes, [str(i) for i in range(len(planes))], tile=32, cols=16)


def rows(images: list[Image.Image]) -> Image.Image:
    """Stack equal-width images vertically (a report grid, one row per example)."""
    width = max(image.width for image in images)
    canvas = Image.new("RGB", (width, sum(image.height for image in images)), "white")
    top = 0
    for image in images:
        canvas.paste(image, (0, top))
        top += image.height
    return canvas
