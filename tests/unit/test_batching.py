"""The dynamic batcher, with deterministic concurrency: predict is gated on events."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from shared.batching import BatchConfig, Batcher
from shared.errors import DeadlineExceededError, InferenceError, InvalidInputError, OverloadedError
from shared.metrics import Metrics


class GatedModel:
    """Doubles its inputs; each batch blocks until the test opens the gate."""

    def __init__(self, gated: bool = True) -> None:
        self.batches: list[list[Any]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        if not gated:
            self.gate.set()

    def predict(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        if "bad" in items:
            raise InvalidInputError("bad item")
        return [item * 2 for item in items]


def run(
    scenario: Callable[[Batcher, GatedModel], Any],
    config: BatchConfig,
    model: GatedModel | None = None,
    arriving: Callable[[], int] | None = None,
) -> Any:
    model = model or GatedModel()
    metrics = Metrics("test")

    async def main() -> Any:
        with ThreadPoolExecutor(max_workers=config.concurrency) as pool:
            batcher = Batcher(model.predict, config, pool, metrics, arriving)
            try:
                return await scenario(batcher, model)
            finally:
                model.gate.set()
                await batcher.stop()

    return asyncio.run(main())


async def wait_entered(model: GatedModel) -> None:
    assert await asyncio.to_thread(model.entered.wait, 10)


def test_requests_coalesce_up_to_max_batch_size() -> None:
    async def scenario(batcher: Batcher, model: GatedModel) -> None:
        first = asyncio.create_task(batcher.submit(0))
        await wait_entered(model)  # batch [0] is running and holds the only slot
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 10)]
        await asyncio.sleep(0)  # let every submit enqueue
        model.gate.set()
        assert await asyncio.gather(first, *rest) == [i * 2 for i in range(10)]
        assert [len(b) for b in model.batches] == [1, 4, 4, 1]
        assert sorted(x for b in model.batches for x in b) == list(range(10))

    run(scenario, BatchConfig(max_batch_size=4, max_delay_ms=1, max_queue=100))


def test_lone_request_is_served_after_max_delay() -> None:
    async def scenario(batcher: Batcher, model: GatedModel) -> None:
        started = time.monotonic()
        assert await batcher.submit(21) == 42
        assert time.monotonic() - started >= 0.05
        assert model.batches == [[21]]

    run(scenario, BatchConfig(max_batch_size=8, max_delay_ms=50), GatedModel(gated=False))


def test_lone_request_with_nothing_arriving_does_not_wait_for_batch_mates() -> None:
    async def scenario(batcher: Batcher, model: GatedModel) -> None:
        started = time.monotonic()
        assert await batcher.submit(21) == 42
        assert time.monotonic() - started < 2.5  # far under max_delay_ms's 10 s
        assert model.batches == [[21]]

    config = BatchConfig(max_batch_size=8, max_delay_ms=10_000)
    run(scenario, config, GatedModel(gated=False), arriving=lambda: 0)


def test_batch_waits_for_a_request_still_arriving() -> None:
    on_the_way = [1]

    async def scenario(batcher: Batcher, model: GatedModel) -> None:
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.2)  # the collector holds [1] and waits for the arriving one
        assert model.batches == []
        on_the_way[0] = 0  # it reaches the queue (as ModelRuntime.infer counts it down)
        second = asyncio.create_task(batcher.submit(2))
        assert await asyncio.gather(first, second) == [2, 4]
        assert model.batches == [[1, 2]]

    config = BatchConfig(max_batch_size=8, max_delay_ms=10_000)
    run(scenario, config, GatedModel(gated=False), arriving=lambda: on_the_way[0])


def test_full_queue_fails_fast_with_503() -> None:
    async def scenario(batcher: Batcher, model: GatedModel) -> None:
        running = asyncio.create_task(batcher.submit(0))
        await wait_entered(model)
        queued = [asyncio.create_task(batcher.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0)
        started = time.monotonic()
        with pytest.raises(OverloadedError) as refused:
            await batcher.submit(3)
        assert time.monotonic() - started < 0.05
        assert refused.value.status == 503 and refused.value.headers["Retry-After"]
        model.gate.set()
        assert await asyncio.gather(running, *queued) == [0, 2, 4]

    run(scenario, BatchConfig(max_batch_size=8, max_delay_ms=0, max_queue=2))


def test_request_past_its_deadline_is_dropped_before_inference() -> None:
    async def scenario(batcher: Batcher, model: GatedModel) -> None:
        running = asyncio.create_task(batcher.submit(0))
        await wait_entered(model)
        late = asyncio.create_task(batcher.submit(1, timeout_s=0.01))
        on_time = asyncio.create_task(batcher.submit(2, timeout_s=30))
        await asyncio.sleep(0.05)
        model.gate.set()
        with pytest.raises(DeadlineExceededError):
            await late
        assert await running == 0 and await on_time == 4
        assert all(1 not in batch for batch in model.batches)

    run(scenario, BatchConfig(max_batch_size=8, max_delay_ms=0))


def test_one_failing_item_does_not_fail_the_others() -> None:
    async def scenario(batcher: Batcher, model: GatedModel) -> None:
        blocker = asyncio.create_task(batcher.submit(0))
        await wait_entered(model)
        tasks = [asyncio.create_task(batcher.submit(x)) for x in (1, "bad", 3)]
        await asyncio.sleep(0)
        model.gate.set()
        results = await asyncio.gather(blocker, *tasks, return_exceptions=True)
        assert results[0] == 0 and results[1] == 2 and results[3] == 6
        assert isinstance(results[2], InvalidInputError)
        assert [1, "bad", 3] in model.batches  # tried as a batch first, then isolated

    run(scenario, BatchConfig(max_batch_size=8, max_delay_ms=0))


def test_results_reach_the_right_callers_under_shuffled_completion() -> None:
    rng = random.Random(7)

    def jittery(items: list[int]) -> list[int]:
        time.sleep(rng.random() / 200)
        return [item * 2 for item in items]

    async def main() -> None:
        with ThreadPoolExecutor(max_workers=3) as pool:
            batcher = Batcher(
                jittery,
                BatchConfig(max_batch_size=5, max_delay_ms=1, concurrency=3),
                pool,
                Metrics("test"),
            )
            values = list(range(200))
            rng.shuffle(values)
            results = await asyncio.gather(*(batcher.submit(v) for v in values))
            await batcher.stop()
        assert results == [v * 2 for v in values]

    asyncio.run(main())


def test_predict_returning_the_wrong_length_is_an_inference_error() -> None:
    async def main() -> None:
        with ThreadPoolExecutor(max_workers=1) as pool:
            batcher = Batcher(
                lambda items: items[:-1], BatchConfig(max_delay_ms=0), pool, Metrics("test")
            )
            with pytest.raises(InferenceError, match="exactly one output per item"):
                await batcher.submit(1)
            await batcher.stop()

    asyncio.run(main())


def test_batch_metrics_are_recorded() -> None:
    metrics = Metrics("test")

    async def main() -> None:
        with ThreadPoolExecutor(max_workers=1) as pool:
            batcher = Batcher(lambda items: items, BatchConfig(max_delay_ms=5), pool, metrics)
            await asyncio.gather(*(batcher.submit(i) for i in range(6)))
            await batcher.stop()

    asyncio.run(main())
    sample = metrics.registry.get_sample_value
    assert sample("modelplane_batch_size_sum", {"service": "test"}) == 6
    assert sample("modelplane_queue_wait_seconds_count", {"service": "test"}) == 6
    assert sample("modelplane_batch_size_count", {"service": "test"}) >= 1
