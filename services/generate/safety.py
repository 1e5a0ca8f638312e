"""The safety-checker hook: every generated image passes one before it is encoded.

A checker says which images to withhold; withheld images are replaced by black ones and
flagged in the response. A Stable Diffusion bundle that carries the `safety_checker` component
is checked by the pipeline itself (`PipelineSafetyChecker` reports its verdicts); other models
get `NoSafetyChecker` unless a service subclass plugs its own in (`make_safety_checker`).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class SafetyChecker(Protocol):
    """Decides, per image, whether it may be returned."""

    #: reported in responses; None means no checker ran
    name: str | None

    def check(
        self, images: list[np.ndarray], params: dict[str, Any], pipeline_flags: list[bool] | None
    ) -> list[bool]:
        """One flag per image: True withholds it."""
        ...


class NoSafetyChecker:
    """No checker: nothing is withheld, and responses say that none ran."""

    name: str | None = None

    def check(
        self, images: list[np.ndarray], params: dict[str, Any], pipeline_flags: list[bool] | None
    ) -> list[bool]:
        return [False] * len(images)


class PipelineSafetyChecker:
    """The Stable Diffusion safety checker that the bundle's pipeline runs itself."""

    name: str | None = "stable-diffusion-safety-checker"

    def check(
        self, images: list[np.ndarray], params: dict[str, Any], pipeline_flags: list[bool] | None
    ) -> list[bool]:
        if pipeline_flags is None or len(pipeline_flags) != len(images):
            raise RuntimeError("the pipeline's safety checker returned no verdicts")
        return list(pipeline_flags)


def withhold(images: list[np.ndarray], flags: list[bool]) -> list[np.ndarray]:
    """Flagged images become black images of the same shape."""
    return [
        np.zeros_like(image) if flag else image for image, flag in zip(images, flags, strict=True)
    ]
