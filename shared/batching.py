"""Dynamic batching: one future per request, a bounded queue, a collector that never polls.

The collector waits for a free batch slot, then for the first item, then for more items until
the batch is full or `max_delay_ms` after the first item's arrival has passed (an awaited
queue read with a timeout, not a poll). Given `arriving` (how many requests are being
preprocessed on their way to the queue), it stops waiting as soon as none is: a lone client
is not made to wait for batch mates that cannot come. The batch runs in the inference
executor; each future gets its own row or its own exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from shared.errors import (
    DeadlineExceededError,
    InferenceError,
    OverloadedError,
    ServingError,
)
from shared.metrics import Metrics

log = logging.getLogger("modelplane.batching")

PredictFn = Callable[[list[Any]], list[Any]]


@dataclass(frozen=True)
class BatchConfig:
    """Batching knobs of one service."""

    max_batch_size: int = 32
    max_delay_ms: float = 2.0
    max_queue: int = 256
    concurrency: int = 1


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future[Any]
    enqueued: float
    deadline: float | None
    route: str


class Batcher:
    """Coalesces concurrent requests into batched `predict` calls."""

    def __init__(
        self,
        predict: PredictFn,
        config: BatchConfig,
        executor: Executor,
        metrics: Metrics,
        arriving: Callable[[], int] | None = None,
    ) -> None:
        self.predict = predict
        self.arriving = arriving
        self.config = config
        self.executor = executor
        self.metrics = metrics
        self.service = metrics.service
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=config.max_queue)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._collector: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._collecting = False  # the collector holds items taken off the queue
        # labelled children looked up once (labels() validates and locks on every call)
        self._queue_wait = metrics.queue_wait.labels(self.service)
        self._batch_size = metrics.batch_size.labels(self.service)
        self._queue_depth = metrics.queue_depth.labels(self.service)

    @property
    def queued(self) -> int:
        """Requests waiting for a batch (not counting the one being collected or run)."""
        return self._queue.qsize()

    @property
    def busy(self) -> bool:
        """A batch is being collected or run, or requests wait for one."""
        return bool(self._running) or self._collecting or not self._queue.empty()

    def start(self) -> None:
        if self._collector is None:
            self._collector = asyncio.get_running_loop().create_task(self._collect_forever())

    async def stop(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
            self._collector = None
        if self._running:
            await asyncio.wait(self._running)
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(OverloadedError("the server is shutting down"))

    async def drain(self, timeout_s: float) -> None:
        """Answer everything already queued or running (a model swap), then stop.

        Requests still waiting after `timeout_s` get stop()'s 503; a model swap waits for
        the old model's queue this way while new requests already go to the new model."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and (
            not self._queue.empty() or self._running or self._collecting
        ):
            await asyncio.sleep(0.005)  # a one-off wait per swap, not on the request path
        await self.stop()

    async def submit(self, item: Any, timeout_s: float | None = None, route: str = "") -> Any:
        """Queue one item and wait for its output; full queue → 503, expired deadline → 504.
        `route` labels the item's queue and predict time in the per-stage histogram."""
        self.start()
        now = time.monotonic()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pending = _Pending(item, future, now, now + timeout_s if timeout_s else None, route)
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            self.metrics.rejections.labels(self.service, "queue_full").inc()
            raise OverloadedError(
                f"the request queue is full ({self.config.max_queue} waiting); retry shortly"
            ) from None
        self._queue_depth.set(self._queue.qsize())
        return await future

    async def _collect_forever(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _collect(self) -> list[_Pending]:
        first = await self._queue.get()
        self._collecting = True
        batch = [first]
        close_at = first.enqueued + self.config.max_delay_ms / 1000
        while len(batch) < self.config.max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = close_at - time.monotonic()
            if remaining <= 0 or (self.arriving is not None and self.arriving() == 0):
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        self._queue_depth.set(self._queue.qsize())
        self._collecting = False  # the caller registers the batch as running before any await
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            live = self._drop_expired_and_cancelled(batch)
            if not live:
                return
            started = time.monotonic()
            for pending in live:
                waited = started - pending.enqueued
                self._queue_wait.observe(waited)
                self._stage(pending.route, "queue").observe(waited)
            self._batch_size.observe(len(live))
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(
                self.executor, self._predict_isolating, [p.item for p in live]
            )
            ran = time.monotonic() - started
            for route in {pending.route for pending in live}:
                self._stage(route, "predict").observe(ran)
            for pending, result in zip(live, results, strict=True):
                if pending.future.done():
                    continue
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)
        except Exception as exc:
            log.exception("batch failed")
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(InferenceError(f"batch failed: {exc}"))
        finally:
            self._slots.release()

    def _stage(self, route: str, stage: str) -> Any:
        return self.metrics.child(self.metrics.stage_duration, self.service, route, stage)

    def _drop_expired_and_cancelled(self, batch: list[_Pending]) -> list[_Pending]:
        now = time.monotonic()
        live = []
        for pending in batch:
            if pending.future.done():  # the client went away
                continue
            if pending.deadline is not None and now > pending.deadline:
                self.metrics.rejections.labels(self.service, "deadline").inc()
                pending.future.set_exception(
                    DeadlineExceededError(
                        f"the request waited {now - pending.enqueued:.3f}s in the queue, past its "
                        "deadline; it was not run"
                    )
                )
                continue
            live.append(pending)
        return live

    def _predict_isolating(self, items: list[Any]) -> list[Any]:
        """Run the batch; if it fails, run items one by one so one bad item fails alone."""
        started = time.perf_counter()
        try:
            outputs = self._checked_predict(items)
        except Exception as exc:  # noqa: BLE001 - isolate below
            if len(items) == 1:
                return [_as_serving_error(exc)]
            outputs = []
            for item in items:
                try:
                    outputs.extend(self._checked_predict([item]))
                except Exception as one:  # noqa: BLE001 - this item's own failure
                    outputs.append(_as_serving_error(one))
        finally:
            self.metrics.inference_duration.labels(self.service).observe(
                time.perf_counter() - started
            )
        return outputs

    def _checked_predict(self, items: list[Any]) -> list[Any]:
        outputs = self.predict(items)
        if len(outputs) != len(items):
            raise InferenceError(
                f"predict returned {len(outputs)} outputs for {len(items)} inputs; it must "
                "return exactly one output per item, in order"
            )
        return list(outputs)


def _as_serving_error(exc: Exception) -> ServingError:
    if isinstance(exc, ServingError):
        return exc
    log.error("predict failed", exc_info=exc)
    return InferenceError(f"predict failed: {type(exc).__name__}: {exc}")
