"""What a service declares: its models, its endpoints (each on a lane) and its settings.

A `Service` subclass is a declaration; `shared` builds everything else from it (routes,
OpenAPI, body reading, the `model` reference in responses, loading, swaps, metrics).
A `ModelService` is one loaded model: the runtime makes a fresh instance per load, so a swap
loads a new one beside the old and switches atomically. Endpoints name the model methods they
run, as plain functions of the model class (`preprocess=ClassifyModel.preprocess`).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

import numpy as np
from fastapi import Request
from pydantic import BaseModel

from shared.bundle import Bundle, TensorSpec
from shared.errors import DeadlineExceededError, ServingError
from shared.predlog import summarize_input, summarize_output
from shared.settings import ServingSettings
from shared.sources import ModelSource


class ModelService(ABC):
    """One model as a service loads it; endpoints call its methods."""

    #: the variant it serves whatever the bundle's default (explain: the torch weights);
    #: None = the bundle variant MODEL_VARIANT (or the bundle default) names
    fixed_variant: ClassVar[str | None] = None

    @abstractmethod
    def load(self, bundle: Bundle, variant: str, settings: Any) -> None:
        """Load the verified bundle's `variant`; raise BundleError if it cannot be served."""

    def warmup(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Run the model once on the bundle's sample inputs before reporting ready."""

    def describe(self) -> dict[str, Any]:
        """Extra facts for GET /v1/model (input spec, labels, threads...)."""
        return {}

    def summarize(self, output: Any) -> dict[str, Any]:
        """A compact summary of one predict output for the prediction log (never raw data)."""
        return summarize_output(output)

    def summarize_call(self, work: Any, output: Any) -> dict[str, Any]:
        """The prediction log's item for a direct or streaming call: `input` (what preprocess
        made of the request) and `output` (the call's result), each compact, never raw data."""
        return {"input": summarize_input(work), "output": summarize_output(output)}

    def agreement(self, mine: Any, theirs: Any) -> float:
        """How far another version's output for the same item agrees with this one's, from 0
        to 1 (shadow traffic, shared/canary.py). The default: the cosine of two tensors
        (negative counts as 0), else 1 for equal outputs and 0 otherwise; services declare
        what fits their task (top-1, first tokens, pixels)."""
        return tensor_agreement(mine, theirs)

    def predict(self, items: list[Any]) -> list[Any]:
        """Batched lane: run a batch; return one output per item, in order."""
        raise NotImplementedError(f"{type(self).__name__} has no batched predict")

    # tensor models (ModelSpec.tensor) also speak the Open Inference Protocol v2: rows of the
    # input tensors become items of the same batcher, outputs are stacked back into tensors
    def tensor_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """The model's input and output tensor specs (tensor models only)."""
        raise NotImplementedError(f"{type(self).__name__} is not a tensor model")

    def tensor_items(self, inputs: dict[str, np.ndarray]) -> list[Any]:
        """Split checked V2 input tensors into batch items (tensor models only)."""
        raise NotImplementedError(f"{type(self).__name__} is not a tensor model")

    def tensor_outputs(self, outputs: list[Any]) -> dict[str, np.ndarray]:
        """Stack predict outputs back into named output tensors (tensor models only)."""
        raise NotImplementedError(f"{type(self).__name__} is not a tensor model")


def tensor_agreement(mine: Any, theirs: Any) -> float:
    """Cosine of two same-shaped tensors clipped to [0, 1]; equality for anything else."""
    if isinstance(mine, np.ndarray) and isinstance(theirs, np.ndarray):
        if mine.shape != theirs.shape:
            return 0.0
        a, b = mine.astype(np.float64).ravel(), theirs.astype(np.float64).ravel()
        norms = float(np.linalg.norm(a) * np.linalg.norm(b))
        if norms == 0.0:
            return 1.0 if not a.any() and not b.any() else 0.0
        return max(0.0, min(1.0, float(a @ b) / norms))
    return 1.0 if mine == theirs else 0.0


def top1_agreement(mine: Any, theirs: Any) -> float:
    """1 when two score vectors rank the same class first, else 0 (classifiers)."""
    return 1.0 if int(np.argmax(mine)) == int(np.argmax(theirs)) else 0.0


@dataclass(frozen=True)
class ModelSpec:
    """A model a service needs: resolved, fetched, verified, warmed, watched and swapped alone.

    Settings are named by field: `uri_setting` holds its models:/ URI (empty: the default
    `models:/<registered_model>@production`, or off when `optional`), `variant_setting` the
    variant, `local_setting` a local directory served instead of the registry."""

    key: str
    model: Callable[[], ModelService]
    registered_model: str
    uri_setting: str = "model_uri"
    variant_setting: str = "model_variant"
    local_setting: str | None = None
    optional: bool = False
    tensor: bool = False


class Lane(StrEnum):
    """How an endpoint's work runs."""

    BATCHED = "batched"  # items through the dynamic batcher: predict(items) -> outputs
    DIRECT = "direct"  # one call per request on a bounded pool
    STREAMING = "streaming"  # a direct call that emits events, sent as SSE when asked


@dataclass(frozen=True)
class Pool:
    """A bounded worker pool of direct and streaming endpoints: `workers` calls run at once,
    `queue` more may wait (beyond: 503); both name a settings field or give a number."""

    name: str
    workers: str | int = 1
    queue: str | int = "max_queue"

    def size(self, settings: ServingSettings) -> tuple[int, int]:
        def read(value: str | int) -> int:
            return int(getattr(settings, value)) if isinstance(value, str) else value

        return read(self.workers), read(self.queue)


Reader = Callable[[Request, Any], Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    """One task route. The request reaches the model as `body` parsed (JSON, strict), or as
    what `reader(request, query)` returns; `preprocess` (in a worker thread) turns it into the
    lane's work; `postprocess` (on the event loop) into the response fields, to which shared
    adds `model`. Batched: preprocess returns a list of items, postprocess gets their outputs.
    Direct and streaming: `call(model, work, call)` runs on `pool`."""

    path: str
    lane: Lane
    summary: str
    model: str = ""  # ModelSpec.key; "" = the service's first model
    method: str = "POST"
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    reader: Reader | None = None
    openapi_body: dict[str, Any] | None = None  # documented body when `reader` reads it
    preprocess: Callable[..., Any] | None = None
    call: Callable[..., Any] | None = None
    postprocess: Callable[..., Any] | None = None
    pool: str = "default"
    response: type[BaseModel] | None = None
    media_type: str = "application/json"  # of the answer; anything else: bytes as they are
    first_event: Callable[..., dict[str, Any]] | None = None  # streaming: sent when it opens
    #: canary routing applies (False: production always answers, e.g. a gallery built with
    #: production's embeddings); shadowing: batched endpoints are shadowed, direct ones when
    #: `shadow` (the challenger's call runs on an idle worker of the same pool)
    rollout: bool = True
    shadow: bool | None = None
    errors: tuple[int, ...] = (400, 401, 413, 415, 422, 503, 504)
    more_errors: dict[int, str] = field(default_factory=dict)
    description: str | None = None


def shadowed(endpoint: Endpoint) -> bool:
    """Whether requests of `endpoint` may be shadowed on the challenger."""
    if not endpoint.rollout:
        return False
    return endpoint.lane is Lane.BATCHED if endpoint.shadow is None else endpoint.shadow


def bound(model: ModelService, hook: Callable[..., Any]) -> Callable[..., Any]:
    """An endpoint hook (a function of the model class) bound to `model`, by name, so a
    subclass that overrides the method is the one called."""
    return getattr(model, hook.__name__)


class CallCancelledError(ServingError):
    """The client went away; the work stopped early (recorded, never sent)."""

    status, code, title = 499, "cancelled", "Client Closed Request"


@dataclass
class Call:
    """One request as its work sees it: deadline, cancellation, events and the model's name."""

    endpoint: str
    model: dict[str, str]
    timeout_s: float
    deadline: float  # time.monotonic()
    request_id: str | None = None  # x-request-id (the prediction log's key)
    started: float = field(default_factory=time.perf_counter)
    cancelled: threading.Event = field(default_factory=threading.Event)
    sink: Callable[[str, dict[str, Any]], None] | None = None

    @property
    def streaming(self) -> bool:
        return self.sink is not None

    def emit(self, event: str, data: dict[str, Any]) -> None:
        """Send one event to a streaming client (nothing when the answer is JSON)."""
        if self.sink is not None:
            self.sink(event, data)

    def check(self, where: str = "") -> None:
        """Stop work between steps when the client left or the deadline has passed."""
        if self.cancelled.is_set():
            raise CallCancelledError("the client closed the connection")
        if time.monotonic() > self.deadline:
            raise DeadlineExceededError(
                f"the work passed the request timeout of {self.timeout_s:g}s{where}"
            )

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


class Service:
    """A service: its name, settings class, models, endpoints and pools. `create_app` builds
    one instance per app; override `make_model` to hand per-app state to every model load."""

    name: ClassVar[str]
    settings_class: ClassVar[type[ServingSettings]] = ServingSettings
    models: ClassVar[tuple[ModelSpec, ...]]
    endpoints: ClassVar[tuple[Endpoint, ...]]
    pools: ClassVar[tuple[Pool, ...]] = ()
    #: state of its own in each process that requests change (a gallery): SERVER_PROCESSES
    #: must stay 1 (shared/supervisor.py)
    single_process: ClassVar[bool] = False

    def make_model(self, spec: ModelSpec) -> ModelService:
        return spec.model()

    def make_source(
        self, spec: ModelSpec, settings: ServingSettings, primary: bool
    ) -> ModelSource | None:
        """Where `spec` loads from (None: turned off); override to plug in another source."""
        from shared.slots import model_source  # slots builds on this module

        return model_source(spec, settings, primary)

    @classmethod
    def check(cls) -> None:
        """Refuse a declaration that could only fail on a request (ValueError, at build)."""
        keys = {spec.key for spec in cls.models}
        pools = {pool.name for pool in cls.pools}
        for endpoint in cls.endpoints:
            where = f"{cls.__name__} endpoint {endpoint.method} {endpoint.path}"
            if endpoint.model and endpoint.model not in keys:
                raise ValueError(f"{where} names model {endpoint.model!r}; declared: {keys}")
            if endpoint.lane is Lane.BATCHED:
                continue
            if endpoint.call is None:
                raise ValueError(f"{where} is {endpoint.lane}: it needs `call`")
            if endpoint.pool not in pools:
                raise ValueError(f"{where} runs on pool {endpoint.pool!r}; declared: {pools}")

    @classmethod
    def spec(cls, key: str = "") -> ModelSpec:
        """The declared model `key` ("" = the first, the primary one)."""
        if not key:
            return cls.models[0]
        for spec in cls.models:
            if spec.key == key:
                return spec
        raise KeyError(f"{cls.__name__} declares no model {key!r}")
