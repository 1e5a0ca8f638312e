"""Admission decisions on a controlled clock: token buckets per client, the in-flight cap."""

from __future__ import annotations

from shared.admission import MAX_TRACKED_CLIENTS, Admission, RateLimiter, client_key, is_work


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def scope(method: str = "POST", path: str = "/v1/classify", **headers: str) -> dict:
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    return {
        "type": "http",
        "method": method,
        "path": path,
        "headers": raw,
        "client": ("10.0.0.7", 5),
    }


def test_a_bucket_allows_its_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, now=clock)
    assert [limiter.wait_s("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.wait_s("a") == 0.5  # one token takes 1/rate seconds
    assert limiter.wait_s("b") == 0.0  # another client has its own bucket
    clock.now += 0.5
    assert limiter.wait_s("a") == 0.0
    clock.now += 60  # long idle: saved tokens never exceed the burst
    assert [limiter.wait_s("a") for _ in range(4)][-1] > 0


def test_the_limiter_forgets_the_least_recently_seen_clients() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, now=Clock())
    for i in range(MAX_TRACKED_CLIENTS + 5):
        limiter.wait_s(f"client-{i}")
    assert len(limiter._buckets) == MAX_TRACKED_CLIENTS
    assert (
        "client-0" not in limiter._buckets
        and f"client-{MAX_TRACKED_CLIENTS + 4}" in limiter._buckets
    )


def test_clients_are_told_apart_by_token_else_address() -> None:
    assert client_key(scope(authorization="Bearer x")) != client_key(
        scope(authorization="Bearer y")
    )
    assert client_key(scope()) == "ip:10.0.0.7"
    assert "Bearer" not in client_key(scope(authorization="Bearer secret"))  # hashed, not kept


def test_only_work_routes_are_admitted_or_refused() -> None:
    assert is_work(scope("POST", "/v1/classify")) and is_work(scope("POST", "/v2/models/m/infer"))
    assert not is_work(scope("GET", "/v1/model"))
    assert not is_work(scope("POST", "/readyz")) and not is_work(scope("GET", "/metrics"))


def test_the_in_flight_cap_refuses_until_a_request_leaves() -> None:
    admission = Admission(max_in_flight=2, rate_limit_rps=0, rate_limit_burst=0)
    assert admission.enter(scope()) is None and admission.enter(scope()) is None
    refused = admission.enter(scope())
    assert refused is not None
    reason, error = refused
    assert reason == "in_flight" and error.status == 503 and error.headers["Retry-After"] == "1"
    admission.leave()
    assert admission.enter(scope()) is None
    assert admission.in_flight == 2


def test_a_rate_limited_client_gets_429_with_whole_seconds_to_wait() -> None:
    admission = Admission(max_in_flight=0, rate_limit_rps=0.25, rate_limit_burst=1)
    assert admission.enter(scope()) is None
    refused = admission.enter(scope())
    assert refused is not None
    reason, error = refused
    assert reason == "rate_limit" and error.status == 429
    assert error.headers["Retry-After"] == "4"
    assert admission.in_flight == 1  # a refused request never counts as in flight
