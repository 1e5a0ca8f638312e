"""Canary and shadow routing between production and the challenger (docs/rollouts.md).

A service may serve, beside the version behind its production alias, the version behind
CHALLENGER_ALIAS. `Router.choose` picks the version that answers a request: the one a caller
names in `x-model-alias`, else the challenger for CANARY_PERCENT of requests (sticky: a client
key in ROLLOUT_KEY_HEADER always lands on the same side), else production. `Router.shadow_for`
picks the production requests that are also run on the challenger (SHADOW_PERCENT): off the
request path, answers compared and recorded, never returned; shed first under load.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

from shared.errors import InvalidInputError, ModelNotReadyError
from shared.metrics import Metrics
from shared.settings import ServingSettings

if TYPE_CHECKING:
    from shared.slots import LoadedModel, ModelSlot

log = logging.getLogger("modelplane.rollout")

#: a caller names the alias that must answer (smoke tests of a challenger)
ALIAS_HEADER = "x-model-alias"
PRODUCTION = "production"
CHALLENGER = "challenger"
SHADOW = "shadow"


def bucket(key: str) -> float:
    """A stable point in [0, 100) for a client key: the same key, the same side of the split."""
    digest = hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100


def production_alias(settings: ServingSettings) -> str:
    """The alias MODEL_URI follows (production unless it names another, or a version)."""
    uri = settings.model_uri
    return uri.rsplit("@", 1)[1] if "@" in uri else PRODUCTION


class Router:
    """Which loaded version answers a request, and which requests are shadowed."""

    def __init__(self, settings: ServingSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.service = metrics.service
        self.production_names = {PRODUCTION, production_alias(settings)}
        self.challenger_name = settings.challenger_alias
        self.canary = settings.canary_percent
        self.shadow = settings.shadow_percent
        self.key_header = settings.rollout_key_header
        self.random = random.Random()
        self.in_flight = 0  # shadow runs not finished
        self._tasks: set[asyncio.Task[Any]] = set()

    def choose(self, slot: ModelSlot, headers: Mapping[str, str] | None) -> LoadedModel:
        """The version that answers: the named alias, the canary's draw, or production.
        The slot's production model must be loaded (the caller checked)."""
        production = slot.current
        assert production is not None
        asked = (headers.get(ALIAS_HEADER) or "").strip() if headers is not None else ""
        if asked:
            return self._named(slot, production, asked)
        challenger = slot.challenger
        if challenger is None or self.canary <= 0:
            return production
        key = headers.get(self.key_header) if headers is not None else None
        point = bucket(key) if key else self.random.random() * 100
        return challenger if point < self.canary else production

    def _named(self, slot: ModelSlot, production: LoadedModel, asked: str) -> LoadedModel:
        if asked in self.production_names:
            return production
        if self.challenger_name and asked in (self.challenger_name, CHALLENGER):
            if slot.challenger is None:
                why = slot.challenger_error or "it is loading"
                raise ModelNotReadyError(
                    f"no version of {slot.spec.key} is served behind alias "
                    f"{self.challenger_name!r} now: {why}"
                )
            return slot.challenger
        known = sorted(self.production_names | ({self.challenger_name} - {""}))
        raise InvalidInputError(
            f"{ALIAS_HEADER}: unknown alias {asked!r}; this service follows {', '.join(known)}"
        )

    def shadow_for(self, slot: ModelSlot, answered: LoadedModel) -> LoadedModel | None:
        """The challenger to shadow this production request on; None when it is not drawn,
        none is loaded, or it is shed (too many shadows running, or production's queue is not
        empty: real requests are waiting, so the shadow would only slow them)."""
        challenger = slot.challenger
        if challenger is None or self.shadow <= 0 or answered is not slot.current:
            return None
        if self.random.random() * 100 >= self.shadow:
            return None
        if self.in_flight >= self.settings.shadow_max_in_flight or answered.batcher.queued:
            self.metrics.shadows.labels(self.service, slot.spec.key, "shed").inc()
            return None
        return challenger

    def start(self, work: Awaitable[None]) -> None:
        """Run one shadow off the request path (counted in flight until it ends)."""
        self.in_flight += 1

        async def run() -> None:
            try:
                await work
            finally:
                self.in_flight -= 1

        task = asyncio.ensure_future(run())
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Cancel the shadows still running (shutdown: nobody waits for their answers)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1)
