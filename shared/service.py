"""The ModelService interface (four methods) and the runtime that loads and runs one.

A service implements `load`, `preprocess`, `predict` and `postprocess`; the runtime fetches and
verifies the bundle, loads it with retries, warms it up, reports readiness and runs requests
off the event loop. A fresh service instance is built per load, so a later model swap can load
a new one beside the old and switch atomically.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
from fastapi import APIRouter

from shared.batching import BatchConfig, Batcher
from shared.bundle import Bundle, TensorSpec
from shared.errors import ModelNotReadyError
from shared.metrics import Metrics
from shared.registry import FetchedModel, ModelRef, configure_client, fetch, resolve_version
from shared.settings import ServingSettings, available_cores

log = logging.getLogger("modelplane.service")

RequestT = TypeVar("RequestT")
ItemT = TypeVar("ItemT")
OutputT = TypeVar("OutputT")
ResponseT = TypeVar("ResponseT")


class ModelService(ABC, Generic[RequestT, ItemT, OutputT, ResponseT]):
    """What a service implements; `shared` adds everything else around it."""

    #: the one name that runs through the stack: folder, route, registered model, metric label
    name: ClassVar[str]
    #: the task routes (under /v1/...) of this service
    router: ClassVar[APIRouter]
    #: the registered model served by default (models:/<it>@production); None = `name`
    registered_model: ClassVar[str | None] = None
    #: this service's defaults for ServingSettings fields (an explicit environment value or
    #: setting still wins), e.g. one item per batch for a service whose requests take seconds
    settings_defaults: ClassVar[dict[str, Any]] = {}

    @abstractmethod
    def load(self, bundle: Bundle, variant: str, settings: ServingSettings) -> None:
        """Load the verified bundle's `variant`; raise BundleError if it cannot be served."""

    def warmup(self) -> None:
        """Run the model once on the bundle's sample inputs before reporting ready."""

    def describe(self) -> dict[str, Any]:
        """Extra facts for GET /v1/model (input spec, labels, threads...)."""
        return {}

    # Tensor models also speak the Open Inference Protocol v2: rows of the V2 input tensors
    # become items for the same batcher, and outputs are stacked back into tensors.
    supports_tensors: ClassVar[bool] = False

    def tensor_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """The model's input and output tensor specs (tensor models only)."""
        raise NotImplementedError(f"{type(self).__name__} is not a tensor model")

    def tensor_items(self, inputs: dict[str, np.ndarray]) -> list[ItemT]:
        """Split checked V2 input tensors into batch items (tensor models only)."""
        raise NotImplementedError(f"{type(self).__name__} is not a tensor model")

    def tensor_outputs(self, outputs: list[OutputT]) -> dict[str, np.ndarray]:
        """Stack predict outputs back into named output tensors (tensor models only)."""
        raise NotImplementedError(f"{type(self).__name__} is not a tensor model")

    @abstractmethod
    def preprocess(self, request: RequestT) -> ItemT:
        """Turn one validated request into a model input; bad input raises InvalidInputError."""

    @abstractmethod
    def predict(self, items: list[ItemT]) -> list[OutputT]:
        """Run the model on a batch; return one output per item, in order."""

    @abstractmethod
    def postprocess(self, output: OutputT, request: RequestT) -> ResponseT:
        """Turn one model output into the response body."""


@dataclass
class LoadedModel:
    """A service instance with a loaded model and where the model came from."""

    service: ModelService[Any, Any, Any, Any]
    name: str
    version: str
    variant: str
    run_id: str | None
    uri: str
    from_cache_only: bool
    load_seconds: float
    batcher: Batcher

    def info(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "variant": self.variant}


class ModelRuntime:
    """Loads a service's model in the background and runs requests through it."""

    def __init__(
        self,
        factory: Callable[[], ModelService[Any, Any, Any, Any]],
        settings: ServingSettings,
        metrics: Metrics,
    ) -> None:
        self.factory = factory
        self.settings = settings
        self.metrics = metrics
        self.service_name = metrics.service
        default_model = getattr(factory, "registered_model", None) or self.service_name
        self.uri = settings.resolved_model_uri(default_model)
        self.current: LoadedModel | None = None
        self.last_error: str | None = "the model is loading"
        self.executor = ThreadPoolExecutor(
            max_workers=settings.inference_workers, thread_name_prefix=f"{self.service_name}-infer"
        )
        self.preprocess_workers = settings.preprocess_workers or available_cores()
        self.preprocess_pool = ThreadPoolExecutor(
            max_workers=self.preprocess_workers,
            thread_name_prefix=f"{self.service_name}-pre",
        )
        self.batch_config = BatchConfig(
            max_batch_size=settings.max_batch_size,
            max_delay_ms=settings.max_delay_ms,
            max_queue=settings.max_queue,
            concurrency=settings.inference_workers,
        )
        self.arriving = 0  # requests between infer() and the batcher's queue (preprocessing)
        self._stop = threading.Event()
        self.draining = False  # set on SIGTERM: /readyz answers 503 while requests still run

    def start_draining(self) -> None:
        """Withdraw readiness (load balancers stop sending) while still serving everything."""
        self.draining = True
        self.metrics.ready.labels(self.service_name).set(0)

    # ---- loading -------------------------------------------------------------------------
    def load_once(self) -> LoadedModel:
        """Fetch, verify, load and warm up the model; raises on any failure."""
        started = time.perf_counter()
        # no retries inside the client: a failed call falls back to the verified cache at once,
        # and load_until_ready / the reload loop already retry with their own backoff
        configure_client(
            self.settings.mlflow_tracking_uri, self.settings.registry_timeout_s, max_retries=0
        )
        fetched: FetchedModel = fetch(self.uri, self.settings.model_cache_dir)
        variant = fetched.bundle.variant_name(self.settings.model_variant or None)
        service = self.factory()
        service.load(fetched.bundle, variant, self.settings)
        service.warmup()
        loaded = LoadedModel(
            service=service,
            name=fetched.name,
            version=fetched.version,
            variant=variant,
            run_id=fetched.run_id or fetched.bundle.manifest.get("source", {}).get("run_id"),
            uri=self.uri,
            from_cache_only=fetched.from_cache_only,
            load_seconds=time.perf_counter() - started,
            batcher=Batcher(
                service.predict,
                self.batch_config,
                self.executor,
                self.metrics,
                arriving=lambda: self.arriving,
            ),
        )
        return loaded

    def activate(self, loaded: LoadedModel) -> None:
        self.current = loaded
        self.last_error = None
        self.metrics.set_model(loaded.name, loaded.version, loaded.variant)
        self.metrics.model_load_seconds.labels(self.service_name).set(loaded.load_seconds)
        self.metrics.ready.labels(self.service_name).set(1)
        log.info(
            "model ready: %s version %s variant %s in %.2fs%s",
            loaded.name,
            loaded.version,
            loaded.variant,
            loaded.load_seconds,
            " (registry unreachable: from verified cache)" if loaded.from_cache_only else "",
        )

    def load_until_ready(self) -> None:
        """Retry loading with capped exponential backoff until it works or the app stops."""
        delay = 0.5
        while not self._stop.is_set():
            try:
                self.activate(self.load_once())
                return
            except Exception as exc:  # noqa: BLE001 - reported and retried
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.metrics.model_load_failures.labels(self.service_name).inc()
                log.error("model load failed (retrying in %.1fs): %s", delay, self.last_error)
            self._stop.wait(delay)
            delay = min(delay * 2, self.settings.load_retry_max_s)

    def serve_models(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loader thread: load until ready, then follow the alias (RELOAD_INTERVAL_S)."""
        self.load_until_ready()
        interval = self.settings.reload_interval_s
        if interval <= 0 or ModelRef.parse(self.uri).alias is None:
            return
        while not self._stop.wait(interval):
            self.reload_if_moved(loop)

    def reload_if_moved(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Zero-downtime swap: when the alias names another version, load, verify and warm it
        beside the serving one, switch atomically, then drain the old batcher. A failed load
        keeps the old model serving (counted in model_load_failures_total)."""
        current = self.current
        try:
            version = resolve_version(self.uri)
        except Exception as exc:  # noqa: BLE001 - registry down: keep serving, look again later
            log.warning("cannot check %s for a new version: %s", self.uri, exc)
            return False
        if current is None or version == current.version:
            return False
        log.info("%s moved to version %s (serving %s)", self.uri, version, current.version)
        try:
            loaded = self.load_once()
        except Exception as exc:  # noqa: BLE001 - reported; the old model keeps serving
            self.metrics.model_load_failures.labels(self.service_name).inc()
            log.error("new version failed to load; still serving %s: %s", current.version, exc)
            return False
        self.activate(loaded)  # one attribute assignment: new requests go to the new model
        drained = asyncio.run_coroutine_threadsafe(
            current.batcher.drain(self.settings.request_timeout_s), loop
        )
        drained.result()
        log.info("switched from version %s to %s", current.version, loaded.version)
        return True

    async def aclose(self) -> None:
        """Stop loading, answer what is queued, and release the worker threads."""
        self._stop.set()
        self.metrics.ready.labels(self.service_name).set(0)
        if self.current is not None:
            await self.current.batcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.preprocess_pool.shutdown(wait=False, cancel_futures=True)

    # ---- serving -------------------------------------------------------------------------
    def require_model(self) -> LoadedModel:
        model = self.current
        if model is None:
            raise ModelNotReadyError(f"the model is not ready: {self.last_error}")
        return model

    async def infer(self, request: Any) -> tuple[Any, LoadedModel]:
        """Preprocess in a worker thread, predict in a dynamic batch, postprocess."""
        model = self.require_model()
        loop = asyncio.get_running_loop()
        self.arriving += 1  # a batch being collected waits for this one (up to max_delay_ms)
        try:
            item = await loop.run_in_executor(
                self.preprocess_pool, model.service.preprocess, request
            )
        finally:
            self.arriving -= 1  # no await between here and submit()'s enqueue
        output = await model.batcher.submit(item, self.settings.request_timeout_s)
        return model.service.postprocess(output, request), model
