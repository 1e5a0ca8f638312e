"""Explicit model control: the Open Inference Protocol's model repository extension.

Off unless MODEL_CONTROL is on, and then only with an API token (a service refuses to start
otherwise). `index` lists the registered versions of the tensor models this service serves and
which is loaded; `load` pins a version: it is fetched, verified, loaded and smoke-tested beside
the serving one, then traffic switches at once and the old batcher drains (no dropped request);
a version that fails any of that is refused (409) and the old one keeps serving. `unload`
returns to following the model's alias. REST routes here; gRPC's in shared/grpcserver.py.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from fastapi import APIRouter, Depends, Request

from shared.errors import InvalidInputError, ModelNotFoundError, ModelNotReadyError, ServingError
from shared.requests import error_responses
from shared.runtime import ModelRuntime
from shared.settings import ServingSettings
from shared.slots import LoadedModel, ModelSlot
from shared.sources import ModelSource, RegistrySource
from shared.v2routes import speaks_v2

_VERSION = re.compile(r"^[1-9][0-9]{0,9}$")


class LoadRefusedError(ServingError):
    """The version asked for cannot be served (missing, corrupt, failed its smoke test)."""

    status, code, title = 409, "load_refused", "Conflict"


class ModelControl:
    """Pins and unpins versions of a service's tensor models, one change at a time."""

    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime
        self.followed: dict[str, ModelSource] = {}  # slot key -> the alias source it left
        self.lock = asyncio.Lock()

    def slot(self, name: str) -> ModelSlot:
        """The tensor model registered as `name` (404 for any other)."""
        for slot in self.runtime.slots.values():
            if slot.spec.tensor and slot.enabled and self._name(slot) == name:
                return slot
        raise ModelNotFoundError(f"model {name!r} is not served here")

    @staticmethod
    def _name(slot: ModelSlot) -> str:
        return slot.current.name if slot.current is not None else slot.spec.registered_model

    async def index(self) -> list[dict[str, str]]:
        """Every registered version of the served tensor models: state READY for the loaded
        one, the aliases naming each, and whether the loaded one is pinned."""
        client = self.runtime.settings.registry_client()
        registered = {m.name: m for m in await asyncio.to_thread(client.registered_models)}
        entries = []
        for slot in self.runtime.slots.values():
            if not (slot.spec.tensor and slot.enabled):
                continue
            name, current = self._name(slot), slot.current
            model = registered.get(name)
            if model is None:
                continue
            for version in model.versions:
                aliases = [
                    f"@{a}" for a, v in sorted(model.aliases.items()) if v == version.version
                ]
                loaded = current is not None and current.version == version.version
                reason = ", ".join(aliases)
                if loaded:
                    how = "pinned" if slot.spec.key in self.followed else "following the alias"
                    reason = f"serving, {how}" + (f"; {reason}" if reason else "")
                entries.append(
                    {
                        "name": name,
                        "version": version.version,
                        "state": "READY" if loaded else "UNAVAILABLE",
                        "reason": reason,
                    }
                )
        return entries

    async def load(self, name: str, version: str) -> LoadedModel:
        """Pin `version` of `name`: load it beside the serving one and switch (409 if broken)."""
        if not isinstance(version, str) or not _VERSION.match(version):
            raise InvalidInputError(f"version must be a registered version number, got {version!r}")
        async with self.lock:
            slot = self.slot(name)
            settings: ServingSettings = self.runtime.settings
            pinned = RegistrySource(
                f"models:/{name}/{version}", settings.registry_client(), settings.model_cache_dir
            )
            followed = self.followed.get(slot.spec.key, slot.source)
            assert followed is not None  # enabled slots have a source
            loaded = await self._switch(slot, pinned, f"version {version} of {name!r}")
            self.followed[slot.spec.key] = followed
            return loaded

    async def unload(self, name: str) -> LoadedModel:
        """Follow the alias again (its version loaded and switched to, if it differs)."""
        async with self.lock:
            slot = self.slot(name)
            followed = self.followed.get(slot.spec.key)
            if followed is None:
                raise LoadRefusedError(f"{name!r} is not pinned: it already follows its alias")
            loaded = await self._switch(slot, followed, followed.uri)
            del self.followed[slot.spec.key]
            return loaded

    async def _switch(self, slot: ModelSlot, source: ModelSource, what: str) -> LoadedModel:
        current, loaded = await asyncio.to_thread(self._load_and_activate, slot, source, what)
        if loaded is current:
            return current  # already serving it: nothing to switch
        await current.batcher.drain(self.runtime.settings.request_timeout_s)
        return loaded

    def _load_and_activate(
        self, slot: ModelSlot, source: ModelSource, what: str
    ) -> tuple[LoadedModel, LoadedModel]:
        """(the model serving before, the one serving now), under the runtime's swap lock, so
        the alias watcher never swaps between this load and its activation."""
        with self.runtime.swap_lock:
            current = slot.current
            if current is None:
                raise ModelNotReadyError("the model is still loading; retry once it is ready")
            previous, slot.source = slot.source, source  # the alias watcher now reads `source`
            try:
                loaded = self.runtime.load_once(slot.spec.key)
            except Exception as exc:  # any load failure refuses the version (re-raised as 409)
                slot.source = previous
                self.runtime.metrics.model_load_failures.labels(self.runtime.service_name).inc()
                raise LoadRefusedError(
                    f"{what} cannot be served ({type(exc).__name__}: {exc}); "
                    f"still serving version {current.version}"
                ) from exc
            if loaded.version == current.version:
                return current, current
            self.runtime.activate(loaded)  # one assignment: new requests go to the new version
            return current, loaded


def check_enabled(settings: ServingSettings) -> None:
    """MODEL_CONTROL without a token would let anyone change the model: refuse to start."""
    if settings.model_control and not settings.api_tokens():
        raise ValueError("MODEL_CONTROL needs API_TOKEN or API_TOKEN_FILE: it changes the model")


def repository_router() -> APIRouter:
    """POST /v2/repository/index, /models/{name}/load ({"parameters": {"version": "3"}}) and
    /models/{name}/unload, with the protocol's {"error": ...} bodies."""
    router = APIRouter(
        prefix="/v2/repository",
        tags=["open inference protocol v2: model repository"],
        dependencies=[Depends(speaks_v2)],
    )
    refusals = error_responses(400, 404, 503, media_type="application/json")
    refusals[409] = {
        "description": "The version cannot be served (missing, corrupt, failed its smoke "
        "test); the serving one keeps serving",
        "content": refusals[400]["content"],
    }

    def control(request: Request) -> ModelControl:
        return request.app.state.model_control  # type: ignore[no-any-return]

    @router.post("/index", summary="Registered versions and which is loaded")
    async def index(request: Request) -> list[dict[str, str]]:
        return await control(request).index()

    @router.post("/models/{name}/load", summary="Pin a version", responses=refusals)
    async def load(request: Request, name: str) -> dict[str, Any]:
        body = await _json_object(request)
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict) or "version" not in parameters:
            raise InvalidInputError('the body must be {"parameters": {"version": "<version>"}}')
        loaded = await control(request).load(name, str(parameters["version"]))
        return {"name": loaded.name, "version": loaded.version, "pinned": True}

    @router.post("/models/{name}/unload", summary="Follow the alias again", responses=refusals)
    async def unload(request: Request, name: str) -> dict[str, Any]:
        loaded = await control(request).unload(name)
        return {"name": loaded.name, "version": loaded.version, "pinned": False}

    return router


async def _json_object(request: Request) -> dict[str, Any]:
    import json

    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidInputError("the body must be a JSON object")
    return body
