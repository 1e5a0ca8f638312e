"""The gate's yardstick: raw onnxruntime batch-1 latency of a fixed reference workload,
measured in short slices *while* the load runs, so it feels the same contention as the
services do.

The workload is built here, deterministically (a seeded chain of MatMul + Relu layers, the
same bytes on every machine and every day), never read from the registry: a ruler that
changed with the registered model would move with what it measures (a slower model would
slow its own ruler and hide; a new export would change the ruler and cry wolf).

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

import numpy as np

#: bump when the workload changes: a baseline measured with another yardstick is refused
REFERENCE = "reference-mlp/1 (1x1024 through 8 MatMul+Relu 1024x1024, seed 0, 1 thread)"


def reference_model(width: int = 1024, layers: int = 8, seed: int = 0) -> bytes:
    """The yardstick's ONNX model, serialized: the same bytes every time."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, last = [], [], "input"
    for i in range(layers):
        # scaled so activations neither vanish nor blow up through the layers
        weight = rng.normal(0, (2 / width) ** 0.5, size=(width, width)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes += [
            helper.make_node("MatMul", [last, f"w{i}"], [f"m{i}"]),
            helper.make_node("Relu", [f"m{i}"], [f"h{i}"]),
        ]
        last = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "yardstick",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info(last, TensorProto.FLOAT, [1, width])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@dataclass
class Yardstick:
    """A one-thread onnxruntime session of the reference workload and its fixed input."""

    slice_s: float = 0.25
    period_s: float = 1.0
    calls: int = 0
    seconds: float = 0.0
    description: str = REFERENCE
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            reference_model(), options, providers=["CPUExecutionProvider"]
        )
        sample = np.random.default_rng(1).normal(size=(1, 1024)).astype(np.float32)
        self.feeds = {"input": sample}
        for _ in range(10):
            self.run()  # warm up outside any measurement

    def run(self) -> None:
        self.session.run(None, self.feeds)

    def measure_slice(self) -> None:
        """Call the model back to back for `slice_s` seconds; add to the running totals."""
        calls = 0
        started = time.perf_counter()
        deadline = started + self.slice_s
        while time.perf_counter() < deadline:
            self.run()
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
