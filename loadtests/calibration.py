"""The gate's yardstick: raw onnxruntime batch-1 latency of the classify bundle, measured in
short slices *while* the load runs, so it feels the same contention as the services do.

Measured between runs instead, it misses what the machine's other tenants do during a run;
measured continuously, it would take a core from the services. A slice of `slice_s` every
`period_s` (a quarter of one core by default) is the compromise. The figure is the mean time
per call over all slices, in milliseconds: time lost to other processes counts, as it does
for the services.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Yardstick:
    """A one-thread onnxruntime session of the bundle's default variant and its sample input."""

    model_uri: str
    cache_dir: Path
    slice_s: float = 0.25
    period_s: float = 1.0
    calls: int = 0
    seconds: float = 0.0
    description: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        from shared.bundle import Bundle
        from shared.onnx import OnnxModel
        from shared.registry import RegistryClient

        registry = RegistryClient.from_environment(timeout_s=5.0, max_retries=0)
        fetched = registry.fetch(self.model_uri, self.cache_dir)
        bundle: Bundle = fetched.bundle
        variant = bundle.default_variant
        self.description = f"{fetched.name} v{fetched.version} {variant}"
        self.model = OnnxModel.from_bundle(bundle, variant, intra_op_threads=1)
        sample = bundle.load_array(bundle.manifest["sample_inputs"])
        self.feeds = {self.model.inputs[0].name: np.ascontiguousarray(sample[:1])}
        for _ in range(10):
            self.model.run(self.feeds)  # warm up outside any measurement

    def measure_slice(self) -> None:
        """Call the model back to back for `slice_s` seconds; add to the running totals."""
        calls = 0
        started = time.perf_counter()
        deadline = started + self.slice_s
        while time.perf_counter() < deadline:
            self.model.run(self.feeds)
            calls += 1
        with self._lock:
            self.calls += calls
            self.seconds += time.perf_counter() - started

    def reset(self) -> None:
        with self._lock:
            self.calls, self.seconds = 0, 0.0

    @property
    def mean_ms(self) -> float:
        return 1000 * self.seconds / max(1, self.calls)

    @contextmanager
    def sampling(self) -> Iterator[None]:
        """Measure a slice every `period_s` seconds in a thread until the block ends."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                self.measure_slice()
                stop.wait(self.period_s - self.slice_s)

        thread = threading.Thread(target=loop, name="yardstick", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
