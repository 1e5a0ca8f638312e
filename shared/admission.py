"""Admission control in front of every work route: an in-flight cap and a per-client rate limit.

Both answer at once, before the body is read or a model is touched: beyond `MAX_IN_FLIGHT`
concurrent work requests a 503 with `Retry-After`, beyond a client's `RATE_LIMIT_RPS` (a token
bucket of `RATE_LIMIT_BURST`) a 429 with the seconds until its next token. Work routes are the
/v1 and /v2 routes that change or compute something (POST, PUT, PATCH, DELETE); metadata reads,
health and metrics are never refused here.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import Scope

from shared.errors import OverloadedError, RateLimitedError, ServingError

_READS = frozenset({"GET", "HEAD", "OPTIONS"})
#: clients remembered by the rate limiter; the least recently seen are forgotten beyond this
MAX_TRACKED_CLIENTS = 10_000


def is_work(scope: Scope) -> bool:
    """A request the admission limits apply to."""
    path: str = scope.get("path", "")
    return scope.get("method", "GET") not in _READS and path.startswith(("/v1/", "/v2/"))


def client_key(scope: Scope) -> str:
    """Who a request counts against: its bearer token (hashed) when it sends one, else its IP."""
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            return "token:" + hashlib.sha256(value).hexdigest()[:16]
    client = scope.get("client")
    return f"ip:{client[0]}" if client else "ip:unknown"


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets per client: `rate` tokens per second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int, now: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(max(1, burst))
        self._now = now
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def wait_s(self, key: str) -> float:
        """0 when the client may go now (a token is spent), else seconds until its next token."""
        now = self._now()
        bucket = self._buckets.pop(key, None) or _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        self._buckets[key] = bucket  # most recently seen last
        while len(self._buckets) > MAX_TRACKED_CLIENTS:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


class Admission:
    """Decides, per work request, whether it may start; `leave()` once it has finished."""

    def __init__(self, max_in_flight: int, rate_limit_rps: float, rate_limit_burst: int) -> None:
        self.max_in_flight = max_in_flight  # 0: no cap
        self.in_flight = 0
        burst = rate_limit_burst or math.ceil(rate_limit_rps)
        self.limiter = RateLimiter(rate_limit_rps, burst) if rate_limit_rps > 0 else None

    def enter(self, scope: Scope) -> tuple[str, ServingError] | None:
        """None when admitted (and counted in flight), else (metric reason, error to answer)."""
        if self.limiter is not None:
            wait = self.limiter.wait_s(client_key(scope))
            if wait > 0:
                return "rate_limit", RateLimitedError(math.ceil(wait))
        if self.max_in_flight and self.in_flight >= self.max_in_flight:
            detail = f"{self.in_flight} requests are in progress, this service's limit"
            return "in_flight", OverloadedError(f"{detail}; retry shortly")
        self.in_flight += 1
        return None

    def leave(self) -> None:
        self.in_flight -= 1
