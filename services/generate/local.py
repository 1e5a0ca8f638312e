"""GENERATE_PIPELINE_DIR: serve a local diffusers pipeline directory without the registry.

The shared runtime always resolves MODEL_URI; for a local directory the app is built with
`load=False` and this module loads the directory itself in the background (same service, same
batcher, same readiness). Files there are not checksummed (no manifest is required), but they
are still loaded with `use_safetensors=True`, so nothing is unpickled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from services.generate.service import GenerateService
from shared.app import create_app
from shared.batching import Batcher
from shared.bundle import Bundle, read_manifest
from shared.errors import BundleError
from shared.service import LoadedModel, ModelRuntime
from shared.settings import ServingSettings

log = logging.getLogger("modelplane.generate")
LOCAL_NAME = "generate-local"


def local_bundle(directory: Path) -> Bundle:
    """The directory as a Bundle: its manifest when it has one, else a minimal one."""
    directory = Path(directory).resolve()
    if not (directory / "model_index.json").is_file():
        raise BundleError(f"GENERATE_PIPELINE_DIR {directory} holds no model_index.json")
    try:
        manifest = read_manifest(directory)
    except BundleError:
        manifest = {"task": "generate", "name": LOCAL_NAME, "variants": {}, "files": {}}
    return Bundle(path=directory, manifest={**manifest, "default_variant": "local"})


def load_local(runtime: ModelRuntime, directory: Path) -> LoadedModel:
    """Load, warm up and wrap the local pipeline like a registry model."""
    started = time.perf_counter()
    bundle = local_bundle(directory)
    service = runtime.factory()
    service.load(bundle, "local", runtime.settings)
    service.warmup()
    return LoadedModel(
        service=service,
        name=str(bundle.manifest.get("name", LOCAL_NAME)),
        version="local",
        variant="local",
        run_id=None,
        uri=str(bundle.path),
        from_cache_only=False,
        load_seconds=time.perf_counter() - started,
        batcher=Batcher(service.predict, runtime.batch_config, runtime.executor, runtime.metrics),
    )


def create_local_app(settings: ServingSettings, directory: Path) -> FastAPI:
    """The generate app serving `directory`; readiness as usual (503 until loaded)."""
    app = create_app(GenerateService, settings, load=False)
    runtime: ModelRuntime = app.state.runtime
    runtime.uri = str(directory)
    inner = app.router.lifespan_context

    def load() -> None:
        try:
            runtime.activate(load_local(runtime, directory))
        except Exception as exc:  # noqa: BLE001 - reported through /readyz and the log
            runtime.last_error = f"{type(exc).__name__}: {exc}"
            log.error("loading %s failed: %s", directory, runtime.last_error)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with inner(app):
            task = asyncio.create_task(asyncio.to_thread(load))
            try:
                yield
            finally:
                await asyncio.wait({task}, timeout=5)

    app.router.lifespan_context = lifespan
    return app
