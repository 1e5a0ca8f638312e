"""Admission and slow clients against a real classify process: the per-client rate limit (429),
the in-flight cap (503), both counted by reason, and the header deadline that cuts off a client
dribbling its request head (slowloris)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.procs import poll_until
from tests.tinyserve import seed_two_speed_cache, serve_classify
from tests.unit.conftest import png_bytes

HEADER_TIMEOUT_S = 1.0
PNG = png_bytes(np.full((8, 8), 120, np.uint8))


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("admission")
    seed_two_speed_cache(tmp / "cache")
    env = {
        "MAX_IN_FLIGHT": "1",
        "RATE_LIMIT_RPS": "0.2",  # one new token every 5 s: a burst of 2, then refusals
        "RATE_LIMIT_BURST": "2",
        "HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "MAX_BATCH_SIZE": "1",
    }
    with serve_classify(tmp / "cache", tmp / "service.log", variant="slow", env=env) as base:
        yield base


def classify(client: httpx.Client, url: str, token: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}", "content-type": "image/png"}
    return client.post(f"{url}/v1/classify", content=PNG, headers=headers)


def rejections(url: str, reason: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("modelplane_rejections_total{") and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no rejections series for {reason}")


def test_a_client_over_its_rate_gets_429_with_retry_after(url: str) -> None:
    with httpx.Client(timeout=30) as client:
        statuses = [classify(client, url, "alice") for _ in range(4)]
        other = classify(client, url, "bob")  # another client keeps its own allowance
        metadata = [client.get(f"{url}/v1/model") for _ in range(5)]  # reads are never limited
    assert [r.status_code for r in statuses] == [200, 200, 429, 429]
    refused = statuses[2]
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert other.status_code == 200
    assert {r.status_code for r in metadata} == {200}
    assert rejections(url, "rate_limit") == 2


def test_requests_over_the_in_flight_cap_get_503_at_once(url: str) -> None:
    before = rejections(url, "in_flight")
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(6) as pool:
        # distinct tokens: each caller is its own client, so only the in-flight cap can refuse
        answers = list(pool.map(lambda i: classify(client, url, f"caller-{i}"), range(6)))
    codes = sorted(r.status_code for r in answers)
    assert 200 in codes and 503 in codes, codes
    assert set(codes) == {200, 503}
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.json()["code"] == "overloaded" and busy.headers["retry-after"] == "1"
    assert rejections(url, "in_flight") - before == codes.count(503)


def test_a_slow_header_client_is_cut_off(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed_after = None
        for i in range(40):  # one header byte every 0.1 s, never finishing the head
            try:
                sock.sendall(b"X-Slow: a\r\n"[i % 11 : i % 11 + 1])
                sock.settimeout(0.1)
                if sock.recv(1024) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - started
                break
    assert closed_after is not None, "the server kept a dribbling connection open for 4 s"
    assert closed_after < HEADER_TIMEOUT_S + 1.5
    # a well-behaved client is unaffected, before and after its deadline would have passed
    with httpx.Client(timeout=30) as client:
        assert client.get(f"{url}/v1/model").status_code == 200
        time.sleep(HEADER_TIMEOUT_S / 2)
        assert client.get(f"{url}/v1/model").status_code == 200


def test_a_client_leaving_mid_body_is_a_499_not_a_server_error(url: str) -> None:
    def count(status: str) -> float:
        total = 0.0
        for line in httpx.get(f"{url}/metrics").text.splitlines():
            if line.startswith("modelplane_requests_total{") and f'status="{status}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    before = count("499"), count("500")
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            "Authorization: Bearer leaver\r\nContent-Length: 5000\r\n\r\n"
        )
        sock.sendall(head.encode() + PNG[:20])  # then hangs up with 4980 bytes unsent
    poll_until(lambda: count("499") > before[0], 10, "the disconnect recorded as 499")
    assert count("500") == before[1]
