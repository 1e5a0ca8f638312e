"""The runtime: loads a service's declared models, follows their aliases, runs the lanes.

Each declared model has a slot: resolved, fetched, verified, loaded, smoke-tested and swapped
on its own (a swap loads the new version beside the old, switches atomically, then drains the
old batcher). The service is ready when every enabled model is.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared.batching import BatchConfig, Batcher
from shared.errors import ModelNotReadyError
from shared.lanes import WorkPool
from shared.metrics import Metrics
from shared.observer import Observation, Observer
from shared.service import Endpoint, ModelService, Service, bound
from shared.settings import ServingSettings, available_cores
from shared.slots import LoadedModel, ModelSlot
from shared.sources import LOCAL_VERSION, LocalSource

log = logging.getLogger("modelplane.service")


class ModelRuntime:
    """Loads a service's models in the background and runs requests through its lanes."""

    def __init__(self, service: Service, settings: ServingSettings, metrics: Metrics) -> None:
        service.check()
        self.service = service
        self.settings = settings
        self.metrics = metrics
        self.service_name = metrics.service
        self.slots = {
            spec.key: ModelSlot(
                spec,
                service.make_source(spec, settings, primary=index == 0),
                str(getattr(settings, spec.variant_setting) or ""),
            )
            for index, spec in enumerate(service.models)
        }
        self.primary = service.models[0].key
        self.executor = ThreadPoolExecutor(
            max_workers=settings.inference_workers, thread_name_prefix=f"{self.service_name}-infer"
        )
        self.preprocess_workers = settings.preprocess_workers or available_cores()
        self.preprocess_pool = ThreadPoolExecutor(
            max_workers=self.preprocess_workers, thread_name_prefix=f"{self.service_name}-pre"
        )
        self.pools = {
            pool.name: WorkPool(f"{self.service_name}-{pool.name}", *pool.size(settings), metrics)
            for pool in service.pools
        }
        self.batch_config = BatchConfig(
            max_batch_size=settings.max_batch_size,
            max_delay_ms=settings.max_delay_ms,
            max_queue=settings.max_queue,
            concurrency=settings.inference_workers,
        )
        self.arriving = 0  # batched requests between preprocess and the batcher's queue
        self.observer = Observer(settings, metrics)  # drift and the prediction log
        self._stop = threading.Event()
        #: one swap at a time: the alias watcher and explicit model control (shared/repository)
        self.swap_lock = threading.Lock()
        self.draining = False  # set on SIGTERM: /readyz answers 503 while requests still run

    # ---- state -----------------------------------------------------------------------------
    @property
    def current(self) -> LoadedModel | None:
        """The primary model being served (None until loaded)."""
        return self.slots[self.primary].current

    @property
    def uri(self) -> str:
        source = self.slots[self.primary].source
        return source.uri if source is not None else ""

    def enabled_slots(self) -> list[ModelSlot]:
        return [slot for slot in self.slots.values() if slot.enabled]

    def served_slots(self) -> list[ModelSlot]:
        """The slots with a loaded model."""
        return [slot for slot in self.slots.values() if slot.current is not None]

    @property
    def ready(self) -> bool:
        return not self.draining and all(s.current is not None for s in self.enabled_slots())

    def not_ready_reason(self) -> str:
        if self.draining:
            return "shutting down: finishing the requests in progress"
        waiting = [s for s in self.enabled_slots() if s.current is None]
        return "; ".join(f"{s.spec.key}: {s.last_error}" for s in waiting)

    def require(self, key: str = "") -> LoadedModel:
        """The model `key` ("" = primary) or 503 while it is not loaded (or turned off)."""
        slot = self.slots[key or self.primary]
        if not slot.enabled:
            raise ModelNotReadyError(f"the {slot.spec.key} model is turned off by the settings")
        if slot.current is None:
            raise ModelNotReadyError(f"the model is not ready: {slot.last_error}")
        return slot.current

    def start_draining(self) -> None:
        """Withdraw readiness (load balancers stop sending) while still serving everything."""
        self.draining = True
        self.metrics.ready.labels(self.service_name).set(0)

    # ---- loading ---------------------------------------------------------------------------
    def load_once(self, key: str = "") -> LoadedModel:
        """Fetch, verify, load and warm up one model; raises on any failure."""
        slot = self.slots[key or self.primary]
        if slot.source is None:
            raise ModelNotReadyError(f"the {slot.spec.key} model is turned off")
        started = time.perf_counter()
        fetched = slot.source.fetch()
        model = self.service.make_model(slot.spec)
        variant = self._variant(slot, model, fetched.bundle, fetched.version)
        model.load(fetched.bundle, variant, self.settings)
        model.warmup()
        drift = self.observer.monitor(fetched.bundle, variant)
        return LoadedModel(
            model=model,
            key=slot.spec.key,
            name=fetched.name,
            version=fetched.version,
            variant=variant,
            run_id=fetched.run_id or fetched.bundle.manifest.get("source", {}).get("run_id"),
            uri=slot.source.uri,
            from_cache_only=fetched.from_cache_only,
            load_seconds=time.perf_counter() - started,
            batcher=Batcher(
                model.predict,
                self.batch_config,
                self.executor,
                self.metrics,
                arriving=lambda: self.arriving,
            ),
            drift=drift,
        )

    @staticmethod
    def _variant(slot: ModelSlot, model: ModelService, bundle: Any, version: str) -> str:
        fixed = model.fixed_variant
        if version == LOCAL_VERSION and isinstance(slot.source, LocalSource):
            return LOCAL_VERSION
        if fixed is not None:
            if slot.variant and slot.variant != fixed:  # a setting shared with other services
                log.warning(
                    "the %s model serves the %r variant only; %s=%r is ignored",
                    slot.spec.key,
                    fixed,
                    slot.spec.variant_setting.upper(),
                    slot.variant,
                )
            return fixed
        return bundle.variant_name(slot.variant or None)

    def activate(self, loaded: LoadedModel) -> None:
        slot = self.slots[loaded.key]
        slot.current = loaded
        slot.last_error = None
        self.observer.activate(loaded.key, loaded.drift)
        self.metrics.set_model(loaded.key, loaded.name, loaded.version, loaded.variant)
        self.metrics.model_load_seconds.labels(self.service_name).set(loaded.load_seconds)
        self.metrics.ready.labels(self.service_name).set(1 if self.ready else 0)
        log.info(
            "model ready: %s version %s variant %s in %.2fs%s",
            loaded.name,
            loaded.version,
            loaded.variant,
            loaded.load_seconds,
            " (registry unreachable: from verified cache)" if loaded.from_cache_only else "",
        )

    def load_until_ready(self) -> None:
        """Load every enabled model, retrying each with capped exponential backoff."""
        delay = 0.5
        while not self._stop.is_set():
            for slot in self.enabled_slots():
                if slot.current is not None:
                    continue
                try:
                    self.activate(self.load_once(slot.spec.key))
                except Exception as exc:  # noqa: BLE001 - reported and retried
                    slot.last_error = f"{type(exc).__name__}: {exc}"
                    self.metrics.model_load_failures.labels(self.service_name).inc()
                    log.error("model load failed (retrying in %.1fs): %s", delay, slot.last_error)
            if all(slot.current is not None for slot in self.enabled_slots()):
                return
            self._stop.wait(delay)
            delay = min(delay * 2, self.settings.load_retry_max_s)

    def serve_models(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loader thread: load until ready, then follow each alias (RELOAD_INTERVAL_S)."""
        self.load_until_ready()
        interval = self.settings.reload_interval_s
        if interval <= 0:
            return
        while not self._stop.wait(interval):
            for slot in self.enabled_slots():
                self.reload_if_moved(loop, slot.spec.key)

    def reload_if_moved(self, loop: asyncio.AbstractEventLoop, key: str = "") -> bool:
        """Zero-downtime swap: when the source names another version, load, verify and warm it
        beside the serving one, switch atomically, then drain the old batcher. A failed load
        keeps the old model serving (counted in model_load_failures_total)."""
        slot = self.slots[key or self.primary]
        with self.swap_lock:  # a pin or unpin (model control) swaps under the same lock
            current = slot.current
            if slot.source is None or current is None:
                return False
            try:
                version = slot.source.current_version()
            except Exception as exc:  # noqa: BLE001 - registry down: keep serving, look later
                log.warning("cannot check %s for a new version: %s", slot.source.uri, exc)
                return False
            if version is None or version == current.version:
                return False
            log.info(
                "%s moved to version %s (serving %s)", slot.source.uri, version, current.version
            )
            try:
                loaded = self.load_once(slot.spec.key)
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
        for slot in self.slots.values():
            if slot.current is not None:
                await slot.current.batcher.stop()
        for pool in self.pools.values():
            pool.shutdown()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.preprocess_pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.observer.close)

    # ---- lanes -----------------------------------------------------------------------------
    async def preprocess(
        self, endpoint: Endpoint, loaded: LoadedModel, request: Any, batched: bool
    ) -> Any:
        """The endpoint's preprocess in a worker thread (timed); the request itself if none."""
        if endpoint.preprocess is None:
            return request
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        if batched:
            self.arriving += 1  # a batch being collected waits for this one (max_delay_ms)
        try:
            return await loop.run_in_executor(
                self.preprocess_pool, bound(loaded.model, endpoint.preprocess), request
            )
        finally:
            if batched:
                self.arriving -= 1  # no await between here and submit()'s enqueue
            self.stage(endpoint.path, "preprocess", time.perf_counter() - started)

    async def submit(
        self,
        loaded: LoadedModel,
        items: list[Any],
        route: str,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> list[Any]:
        """Items through the model's batcher, in order (a lone item without gather), within
        `timeout_s` (default REQUEST_TIMEOUT_S); the answered request goes to the observer
        (drift, prediction log) without waiting."""
        timeout = timeout_s or self.settings.request_timeout_s
        started = time.perf_counter()
        if len(items) == 1:
            outputs = [await loaded.batcher.submit(items[0], timeout, route)]
        else:
            outputs = list(
                await asyncio.gather(*(loaded.batcher.submit(i, timeout, route) for i in items))
            )
        if self.observer.wanted(loaded.drift):
            self.observer.observe(
                Observation(
                    loaded.key,
                    loaded.model,
                    loaded.info(),
                    loaded.drift,
                    route,
                    request_id,
                    items,
                    outputs,
                    time.perf_counter() - started,
                    time.time(),
                )
            )
        return outputs

    def stage(self, route: str, stage: str, seconds: float) -> None:
        self.metrics.stage_duration.labels(self.service_name, route, stage).observe(seconds)

    def pool(self, name: str) -> WorkPool:
        return self.pools[name]
