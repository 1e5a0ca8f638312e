"""A signal reaching a service process does no work in the handler (shared/serve.py).

The handler runs on the main thread between two bytecodes of whatever the event loop was
doing: possibly a metric update holding prometheus_client's lock, which in multiprocess mode
is one lock for every metric and not reentrant. Draining sets the ready gauge; done in the
handler it waited on that lock for ever (CI saw a service process ignore SIGTERM that way)."""

from __future__ import annotations

import asyncio
import signal
import threading

import uvicorn

from shared.serve import DrainingServer


async def _empty_app(scope: object, receive: object, send: object) -> None:
    return None


def test_a_signal_during_a_metric_update_drains_once_the_update_is_done() -> None:
    drained: list[str] = []
    metric_lock = threading.Lock()  # as prometheus_client's in multiprocess mode: not reentrant

    def start_draining() -> None:  # what the runtime does: set the ready gauge, under the lock
        with metric_lock:
            drained.append("ready=0")

    server = DrainingServer(uvicorn.Config(_empty_app), 0.0, start_draining)

    async def serving() -> None:
        with server.capture_signals():  # (off the main thread: installs no handler)
            with metric_lock:  # a metric update, interrupted by the signal
                server.handle_exit(signal.SIGTERM, None)
                assert drained == []  # handed to the loop, not run inside the update
            for _ in range(10):
                if server.should_exit:
                    break
                await asyncio.sleep(0)

    finished = threading.Event()

    def run() -> None:
        asyncio.run(serving())
        finished.set()

    thread = threading.Thread(target=run, daemon=True)  # a deadlock must fail, not hang
    thread.start()
    thread.join(10)
    assert finished.is_set(), "the signal handler deadlocked on the metric lock"
    assert drained == ["ready=0"] and server.should_exit
