"""Each of the five services served from a tiny verified bundle the tests build themselves."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests import tinydiffusion, tinyexplain, tinymodels, tinysimilarity, tinytext


@dataclass(frozen=True)
class Tiny:
    """How to serve one service small: what seeds its cache, the settings it needs."""

    seed: Callable[[Path], object]  # places a tiny verified bundle in the cache
    env: dict[str, str] = field(default_factory=dict)


TINY: dict[str, Tiny] = {
    "classify": Tiny(lambda cache: tinymodels.seed_cache(cache, fitted=True)),
    "similarity": Tiny(tinysimilarity.seed_cache),
    "explain": Tiny(
        tinyexplain.write_region_cache,
        {
            "MODEL_URI": "models:/region@production",
            "MAX_BODY_BYTES": str(256 * 1024),
            "MAX_IMAGE_PIXELS": str(256 * 256),
        },
    ),
    "generate": Tiny(tinydiffusion.seed_cache),
    "text": Tiny(tinytext.seed_cache),
}
