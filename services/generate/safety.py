"""The safety-checker hook: every generated image passes one before it is encoded.

A checker says which images to withhold; withheld images are replaced by black ones and
flagged in the response. A Stable Diffusion bundle that carries the `safety_checker` component
is checked by the pipeline itself (`PipelineSafetyChecker` reports its verdicts); other models
get `NoSafetyChecker` unless a service subclass plugs its own in (`make_safety_checker`).

Before any of that, `PromptFilter` refuses prompts that name a blocked term
(GENERATE_BLOCKED_TERMS) with a 422 `prompt_blocked`, before the request queues.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import numpy as np

from shared.errors import InvalidParameterError


class PromptBlockedError(InvalidParameterError):
    """The prompt names a term this deployment refuses to draw."""

    code = "prompt_blocked"


class PromptFilter:
    """Blocked terms matched in the prompt as whole words, case- and spacing-insensitive."""

    def __init__(self, terms: list[str]) -> None:
        self.terms = sorted({_normal(term) for term in terms if term.strip()})
        alternatives = "|".join(re.escape(term) for term in self.terms)
        self.pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)") if self.terms else None

    @classmethod
    def parse(cls, setting: str) -> PromptFilter:
        """From the setting's comma-separated list (`"gore, graphic violence"`)."""
        return cls(setting.split(","))

    def check(self, prompt: str | None) -> None:
        """Raise PromptBlockedError when `prompt` contains a blocked term."""
        if self.pattern is None or not prompt:
            return
        found = self.pattern.search(_normal(prompt))
        if found:
            raise PromptBlockedError(
                f"prompt: contains the blocked term {found.group(0)!r} (GENERATE_BLOCKED_TERMS); "
                "this service does not draw it: rephrase the prompt"
            )


def _normal(text: str) -> str:
    return " ".join(text.casefold().split())


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
