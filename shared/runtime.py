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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared.batching import BatchConfig, Batcher
from shared.canary import CHALLENGER, PRODUCTION, SHADOW, Router
from shared.errors import ModelNotReadyError
from shared.lanes import WorkPool
from shared.metrics import Metrics
from shared.observer import Observation, Observer
from shared.registry import is_not_found
from shared.service import Call, Endpoint, ModelService, Service, bound, shadowed
from shared.settings import ServingSettings, available_cores
from shared.slots import UNCHECKED, LoadedModel, ModelSlot, challenger_source
from shared.sources import LOCAL_VERSION, LocalSource, RegistrySource

log = logging.getLogger("modelplane.service")


#: weight of the newest preprocess time in its route's moving average
COST_WEIGHT = 0.2


def _timed(run: Callable[[Any], Any], request: Any) -> tuple[Any, float]:
    """`run(request)` and the seconds it took (in a worker thread)."""
    started = time.perf_counter()
    return run(request), time.perf_counter() - started


class ModelRuntime:
    """Loads a service's models in the background and runs requests through its lanes."""

    def __init__(self, service: Service, settings: ServingSettings, metrics: Metrics) -> None:
        service.check()
        self.service = service
        self.settings = settings
        self.metrics = metrics
        self.service_name = metrics.service
        self.slots = {}
        for index, spec in enumerate(service.models):
            source = service.make_source(spec, settings, primary=index == 0)
            variant = str(getattr(settings, spec.variant_setting) or "")
            rollout = challenger_source(source, settings)
            self.slots[spec.key] = ModelSlot(spec, source, variant, rollout)
        self.primary = service.models[0].key
        self.executor = ThreadPoolExecutor(
            max_workers=settings.inference_workers, thread_name_prefix=f"{self.service_name}-infer"
        )
        self.preprocess_workers = settings.preprocess_workers or available_cores()
        self.inline_preprocess_s = settings.preprocess_inline_us / 1e6
        self._preprocess_cost: dict[str, float] = {}  # route -> moving average, seconds
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
        self.router = Router(settings, metrics)  # canary and shadow (shared/canary.py)
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

    def choose(self, key: str = "", headers: Any = None) -> LoadedModel:
        """The version that answers a request for model `key`: the alias the request names
        (x-model-alias), the challenger for CANARY_PERCENT of requests, else production."""
        self.require(key)
        return self.router.choose(self.slots[key or self.primary], headers)

    def start_draining(self) -> None:
        """Withdraw readiness (load balancers stop sending) while still serving everything."""
        self.draining = True
        self.metrics.ready.labels(self.service_name).set(0)

    # ---- loading ---------------------------------------------------------------------------
    def load_once(self, key: str = "", role: str = PRODUCTION) -> LoadedModel:
        """Fetch, verify, load and warm up one model (its production or challenger version);
        raises on any failure."""
        slot = self.slots[key or self.primary]
        source = slot.source_for(role)
        if source is None:
            raise ModelNotReadyError(f"the {slot.spec.key} model has no {role} source")
        started = time.perf_counter()
        fetched = source.fetch()
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
            uri=source.uri,
            from_cache_only=fetched.from_cache_only,
            load_seconds=time.perf_counter() - started,
            batcher=Batcher(
                model.predict,
                self.batch_config,
                self.executor if role == PRODUCTION else self._challenger_executor(),
                self.metrics,
                arriving=lambda: self.arriving,
            ),
            drift=drift,
            role=role,
        )

    def _load_challenger(self, slot: ModelSlot, what: str) -> bool:
        """Load the challenger beside production (under the swap lock); False on failure,
        which is reported while production keeps serving."""
        try:
            loaded = self.load_once(slot.spec.key, CHALLENGER)
        except Exception as exc:  # noqa: BLE001 - reported; production keeps serving
            slot.challenger_error = f"{type(exc).__name__}: {exc}"
            self.metrics.model_load_failures.labels(self.service_name).inc()
            log.error("challenger %s of %s failed to load: %s", what, slot.spec.key, exc)
            return False
        assert slot.current is not None
        slot.challenger, slot.challenger_error = loaded, None
        log.info(
            "challenger %s version %s ready beside production version %s (canary %g%%, "
            "shadow %g%%)",
            slot.spec.key,
            loaded.version,
            slot.current.version,
            self.settings.canary_percent,
            self.settings.shadow_percent,
        )
        return True

    def _challenger_executor(self) -> ThreadPoolExecutor:
        """A challenger's own inference threads: its batches (canary and shadow) never wait
        for production's batch slot, nor production's for its (released with it)."""
        return ThreadPoolExecutor(
            max_workers=self.settings.inference_workers,
            thread_name_prefix=f"{self.service_name}-challenger",
        )

    def _release(self, loaded: LoadedModel) -> None:
        """Shut down a retired model's own executor (a challenger's; production's is shared)."""
        if loaded.batcher.executor is not self.executor:
            loaded.batcher.executor.shutdown(wait=False)

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
        loaded.role = PRODUCTION  # a promoted challenger is handed over as it is
        if slot.challenger is loaded:
            slot.challenger = None
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
                for slot in self.enabled_slots():
                    self.follow_challenger(None, slot.spec.key)
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
                for follow in (self.reload_if_moved, self.follow_challenger):
                    try:
                        follow(loop, slot.spec.key)
                    except Exception:  # the watch goes on: a failed look is tried again
                        log.exception("following %s failed; trying again", slot.spec.key)

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
                challenger = slot.challenger
                if challenger is not None and challenger.version == version:
                    loaded = challenger  # promoted: the loaded, verified challenger takes over
                else:
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
        self._release(current)
        log.info("switched from version %s to %s", current.version, loaded.version)
        return True

    def follow_challenger(self, loop: asyncio.AbstractEventLoop | None, key: str = "") -> bool:
        """Load the version behind CHALLENGER_ALIAS beside production when the alias names one
        (verified and smoke-tested like production), follow it when it moves, and let it go
        when the alias is removed or names production's version. Returns True on a change."""
        slot = self.slots[key or self.primary]
        source = slot.challenger_source
        if source is None or slot.current is None:
            return False
        with self.swap_lock:
            try:
                version = source.current_version()
            except Exception as exc:  # noqa: BLE001 - absent alias, or registry down
                if not is_not_found(exc):
                    log.warning("cannot check %s: %s", source.uri, exc)
                    cached = isinstance(source, RegistrySource) and source.cached_version()
                    if slot.challenger is not None or slot.challenger_error != UNCHECKED:
                        return False
                    if not cached or cached == slot.current.version:
                        slot.challenger_error = f"the registry is unreachable: {exc}"
                        return False
                    # first look with the registry down: the cache's last known challenger
                    return self._load_challenger(slot, "the cached alias")
                version = None
                if isinstance(source, RegistrySource):
                    source.forget_cached_alias()  # an outage later must not revive it
            old = slot.challenger
            if version is None or version == slot.current.version:
                slot.challenger_error = (
                    f"alias names production's version {version}"
                    if version
                    else f"{source.uri} names no version"
                )
                if old is None:
                    return False
                slot.challenger = None
                log.info("challenger %s version %s retired", slot.spec.key, old.version)
            elif old is not None and old.version == version:
                return False  # unchanged
            elif not self._load_challenger(slot, f"version {version}"):
                return False
        if old is not None and old is not slot.current and loop is not None:
            drain = old.batcher.drain(self.settings.request_timeout_s)
            asyncio.run_coroutine_threadsafe(drain, loop).result()
            self._release(old)
        return True

    async def aclose(self) -> None:
        """Stop loading, answer what is queued, and release the worker threads."""
        self._stop.set()
        self.metrics.ready.labels(self.service_name).set(0)
        await self.router.aclose()
        for slot in self.slots.values():
            for loaded in (slot.current, slot.challenger):
                if loaded is not None:
                    await loaded.batcher.stop()
                    self._release(loaded)
        for pool in self.pools.values():
            pool.shutdown()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.preprocess_pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.observer.close)

    # ---- lanes -----------------------------------------------------------------------------
    async def preprocess(
        self, endpoint: Endpoint, loaded: LoadedModel, request: Any, batched: bool
    ) -> Any:
        """The endpoint's preprocess (timed); the request itself if none.

        Cheap preprocessing (a small image decoded, a short text tokenized) runs right here
        on the event loop: the hand-off to a worker thread and back (two wake-ups and two
        GIL switches) cost more than the work itself, about half the server's CPU per request
        on a fast model (docs/performance.md). An endpoint whose moving average passes
        PREPROCESS_INLINE_US goes to the preprocess workers until it is cheap again, so large
        inputs do not hold up the loop."""
        if endpoint.preprocess is None:
            return request
        run = bound(loaded.model, endpoint.preprocess)
        path = endpoint.path
        started = time.perf_counter()
        inline = self.inline_preprocess_s
        if inline > 0 and self._preprocess_cost.get(path, 0.0) <= inline:
            try:
                return run(request)
            finally:
                took = time.perf_counter() - started
                self._preprocessed(path, took, took)
        if batched:
            self.arriving += 1  # a batch being collected waits for this one (max_delay_ms)
        own = None
        try:
            loop = asyncio.get_running_loop()
            result, own = await loop.run_in_executor(self.preprocess_pool, _timed, run, request)
            return result
        finally:
            if batched:
                self.arriving -= 1  # no await between here and submit()'s enqueue
            took = time.perf_counter() - started
            self._preprocessed(path, took, took if own is None else own)

    def _preprocessed(self, path: str, took: float, own: float) -> None:
        """Record a preprocess stage (`took`, hand-offs included) and its own cost."""
        self.stage(path, "preprocess", took)
        average = self._preprocess_cost.get(path, own)
        self._preprocess_cost[path] = average + (own - average) * COST_WEIGHT

    async def submit(
        self,
        loaded: LoadedModel,
        items: list[Any],
        route: str,
        request_id: str | None = None,
        timeout_s: float | None = None,
        shadow: bool = True,
    ) -> list[Any]:
        """Items through the model's batcher, in order (a lone item without gather), within
        `timeout_s` (default REQUEST_TIMEOUT_S), counted per version and role; the answered
        request goes to the observer (drift, prediction log) and, drawn for SHADOW_PERCENT,
        to the challenger (shadow), without waiting for either."""
        timeout = timeout_s or self.settings.request_timeout_s
        started = time.perf_counter()
        try:
            outputs = await self._run_batched(loaded, items, route, timeout)
        except Exception:
            self.metrics.model_requests.labels(
                self.service_name, loaded.key, loaded.version, loaded.role, "error"
            ).inc()
            raise
        self.record(loaded, loaded.role, time.perf_counter() - started)
        if shadow and (challenger := self.router.shadow_for(self.slots[loaded.key], loaded)):
            self.router.start(self._shadow(loaded, challenger, items, outputs, route))
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

    @staticmethod
    async def _run_batched(
        loaded: LoadedModel, items: list[Any], route: str, timeout: float
    ) -> list[Any]:
        if len(items) == 1:
            return [await loaded.batcher.submit(items[0], timeout, route)]
        return list(
            await asyncio.gather(*(loaded.batcher.submit(i, timeout, route) for i in items))
        )

    def record(self, loaded: LoadedModel, role: str, seconds: float, ok: bool = True) -> None:
        """One request of `loaded` in the per-version metrics (role: production, challenger
        or shadow)."""
        labels = (self.service_name, loaded.key, loaded.version, role)
        self.metrics.child(self.metrics.model_requests, *labels, "ok" if ok else "error").inc()
        if ok:
            self.metrics.child(self.metrics.model_latency, *labels).observe(seconds)

    async def _shadow(
        self,
        production: LoadedModel,
        challenger: LoadedModel,
        items: list[Any],
        expected: list[Any],
        route: str,
    ) -> None:
        """The same items on the challenger; its answers are compared, never returned."""
        started = time.perf_counter()
        timeout = self.settings.request_timeout_s
        try:
            outputs = await self._run_batched(challenger, items, f"{route} (shadow)", timeout)
        except Exception as exc:  # noqa: BLE001 - counted; the client has its answer already
            self.record(challenger, SHADOW, 0.0, ok=False)
            self.metrics.shadows.labels(self.service_name, production.key, "error").inc()
            log.debug("shadow run on version %s failed: %s", challenger.version, exc)
            return
        self.record(challenger, SHADOW, time.perf_counter() - started)
        self.compare(production, challenger, expected, outputs)

    def called(
        self, endpoint: Endpoint, loaded: LoadedModel, work: Any, output: Any, call: Call
    ) -> None:
        """A direct or streaming call answered: counted per version, and shadowed on the
        challenger when the endpoint allows it, one is drawn, and the pool has an idle
        worker (a shadow never waits in the queue ahead of a real request). The sampled share
        goes to the prediction log."""
        seconds = call.elapsed_ms() / 1000
        self.record(loaded, loaded.role, seconds)
        self.observer.observe_call(loaded, call.endpoint, call.request_id, work, output, seconds)
        if not shadowed(endpoint):
            return
        challenger = self.router.shadow_for(self.slots[loaded.key], loaded)
        if challenger is None:
            return
        pool = self.pool(endpoint.pool)
        if pool.pending >= pool.workers:
            self.metrics.shadows.labels(self.service_name, loaded.key, "shed").inc()
            return
        assert endpoint.call is not None
        run = bound(challenger.model, endpoint.call)
        timeout = self.settings.request_timeout_s
        shadow_call = Call(
            f"{endpoint.path} (shadow)", challenger.info(), timeout, time.monotonic() + timeout
        )

        async def shadow() -> None:
            try:
                theirs = await pool.run(lambda: run(work, shadow_call), shadow_call)
            except Exception as exc:  # noqa: BLE001 - counted; the client has its answer
                self.record(challenger, SHADOW, 0.0, ok=False)
                self.metrics.shadows.labels(self.service_name, loaded.key, "error").inc()
                log.debug("shadow call on version %s failed: %s", challenger.version, exc)
                return
            self.record(challenger, SHADOW, shadow_call.elapsed_ms() / 1000)
            self.compare(loaded, challenger, [output], [theirs])

        self.router.start(shadow())

    def compare(
        self, production: LoadedModel, challenger: LoadedModel, expected: list[Any], got: list[Any]
    ) -> None:
        """Record how far the challenger's outputs agree with production's (per item)."""
        histogram = self.metrics.shadow_agreement.labels(
            self.service_name, production.key, challenger.version
        )
        for mine, theirs in zip(expected, got, strict=True):
            histogram.observe(production.model.agreement(mine, theirs))
        self.metrics.shadows.labels(self.service_name, production.key, "compared").inc()

    def stage(self, route: str, stage: str, seconds: float) -> None:
        self.metrics.child(self.metrics.stage_duration, self.service_name, route, stage).observe(
            seconds
        )

    def pool(self, name: str) -> WorkPool:
        return self.pools[name]
