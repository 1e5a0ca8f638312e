"""The direct and streaming lanes: bounded worker pools, and work streamed as SSE.

A pool runs `workers` calls at once and lets `queue` more wait; beyond that a request is
refused at once (503), and one that waited past its deadline is not run (504). A streaming
call's events cross from the worker thread to the event loop through a queue; the stream opens
only once the work has started, so a refusal is a real status, never an event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shared.errors import DeadlineExceededError, OverloadedError, ServingError
from shared.metrics import Metrics
from shared.problem import problem_event, sse
from shared.service import Call

Work = Callable[[], Any]


class WorkPool:
    """A bounded pool: `workers` threads, `queue` waiting calls at most, deadlines enforced."""

    def __init__(self, name: str, workers: int, queue: int, metrics: Metrics) -> None:
        self.name = name
        self.workers = workers
        self.queue = queue
        self.metrics = metrics
        self.service = metrics.service
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self.pending = 0  # admitted and not finished: running + waiting

    def admit(self) -> None:
        """Count one call in, or refuse it (503) when every worker is busy and the queue full."""
        if self.pending >= self.workers + self.queue:
            self.metrics.rejections.labels(self.service, "queue_full").inc()
            raise OverloadedError(
                f"the {self.name} queue is full ({self.workers} running, {self.queue} waiting); "
                "retry shortly"
            )
        self.pending += 1
        self._gauge()

    def release(self) -> None:
        self.pending -= 1
        self._gauge()

    def _gauge(self) -> None:
        self.metrics.queue_depth.labels(self.service).set(max(0, self.pending - self.workers))

    def start(self, work: Work, call: Call, started: asyncio.Event | None = None) -> asyncio.Future:
        """Run an admitted call; its future fails with 504 if it waited past its deadline.
        `started` is set (on the loop) when the work begins or is refused."""
        loop = asyncio.get_running_loop()
        enqueued = time.monotonic()

        def signal() -> None:
            if started is not None:
                loop.call_soon_threadsafe(started.set)

        def run() -> Any:
            now = time.monotonic()
            self.metrics.stage_duration.labels(self.service, call.endpoint, "queue").observe(
                now - enqueued
            )
            if call.cancelled.is_set():
                signal()
                return None
            if now > call.deadline:
                self.metrics.rejections.labels(self.service, "deadline").inc()
                signal()
                raise DeadlineExceededError(
                    f"the request waited {now - enqueued:.3f}s for a worker, past its deadline; "
                    "it was not run"
                )
            signal()
            begun = time.perf_counter()
            try:
                return work()
            finally:
                self.metrics.stage_duration.labels(self.service, call.endpoint, "predict").observe(
                    time.perf_counter() - begun
                )

        future = loop.run_in_executor(self.executor, run)
        future.add_done_callback(lambda _: self.release())
        return future

    def submit(
        self, work: Work, call: Call, started: asyncio.Event | None = None
    ) -> asyncio.Future:
        """Admit (or refuse with 503) and start one call."""
        self.admit()
        try:
            return self.start(work, call, started)
        except BaseException:
            self.release()
            raise

    async def run(self, work: Work, call: Call) -> Any:
        """Admit, run and wait for one call."""
        future = self.submit(work, call)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            call.cancelled.set()  # the request was abandoned: let the work stop early
            raise

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


async def open_stream(
    pool: WorkPool,
    work: Callable[[Call], Any],
    call: Call,
    first: dict[str, Any] | None,
    finish: Callable[[Any], dict[str, Any]],
) -> AsyncIterator[bytes]:
    """Start `work(call)` and wait until it runs (a refusal raises here, before any byte);
    then the events it emits, and `result` (finish(output)) or `error` as its last event."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    call.sink = lambda event, data: loop.call_soon_threadsafe(events.put_nowait, (event, data))
    begun = asyncio.Event()
    future = pool.submit(lambda: work(call), call, begun)
    future.add_done_callback(lambda f: f.cancelled() or f.exception())  # never unretrieved
    waiter = asyncio.ensure_future(begun.wait())
    try:
        await asyncio.wait({future, waiter}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        call.cancelled.set()
        raise
    finally:
        waiter.cancel()
    if future.done() and future.exception() is not None and events.empty():
        raise future.exception()  # refused or failed before its first event: a real status
    return _events(future, events, call, first, finish)


async def _events(
    future: asyncio.Future,
    events: asyncio.Queue[tuple[str, dict[str, Any]]],
    call: Call,
    first: dict[str, Any] | None,
    finish: Callable[[Any], dict[str, Any]],
) -> AsyncIterator[bytes]:
    try:
        if first is not None:
            yield sse("queued", first)
        while not future.done() or not events.empty():
            getter = asyncio.ensure_future(events.get())
            await asyncio.wait({future, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield sse(*getter.result())
            else:
                getter.cancel()
        try:
            output = future.result()
        except ServingError as exc:
            yield sse("error", problem_event(exc))
            return
        yield sse("result", finish(output))
    finally:
        call.cancelled.set()  # the client left early (or the stream ended): stop the work
