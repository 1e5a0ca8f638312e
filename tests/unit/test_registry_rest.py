"""The REST lookups a serving process makes instead of importing mlflow, against real HTTP
servers on loopback that answer as MLflow's registry API does (and record what they were sent).
Every RegistryClient talks to its own server with its own credentials; none touches os.environ."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import pytest

from shared.errors import RegistryError
from shared.registry import BUNDLE_SHA_TAG, RegistryClient
from tests.unit.conftest import DEAD_REGISTRY

AUTH_VARIABLES = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@dataclass
class FakeRegistry:
    """A loopback server whose model `m` has alias `production` at `version`."""

    uri: str
    version: str
    seen: list[dict[str, Any]] = field(default_factory=list)


class Registry(BaseHTTPRequestHandler):
    fake: ClassVar[FakeRegistry]

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.fake.seen.append({"path": url.path, "query": query, **dict(self.headers)})
        if url.path == "/api/2.0/mlflow/registered-models/alias" and query.get("name") == "m":
            version = {"name": "m", "version": self.fake.version, "run_id": "r1"}
            self.answer(200, {"model_version": {**version, "tags": [{"key": BUNDLE_SHA_TAG}]}})
        else:
            self.answer(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such"})

    def answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def fake_registry(version: str = "7") -> Iterator[FakeRegistry]:
    handler = type("OneRegistry", (Registry,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.fake = FakeRegistry(f"http://127.0.0.1:{server.server_address[1]}", version)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler.fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRegistry]:
    for var in AUTH_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    with fake_registry() as fake:
        yield fake


def test_an_alias_resolves_with_one_get(registry: FakeRegistry) -> None:
    assert RegistryClient(registry.uri, timeout_s=2).resolve_version("models:/m@production") == "7"
    (call,) = registry.seen
    assert call["path"] == "/api/2.0/mlflow/registered-models/alias"
    assert call["query"] == {"name": "m", "alias": "production"}
    assert "Authorization" not in call


def test_the_clients_own_token_or_basic_auth_is_sent(
    registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "from-the-environment")  # must not be used
    RegistryClient(registry.uri, token="t0ken").resolve_version("models:/m@production")
    RegistryClient(registry.uri, username="ann", password="pw").resolve_version(
        "models:/m@production"
    )
    RegistryClient(registry.uri).resolve_version("models:/m@production")
    assert registry.seen[0]["Authorization"] == "Bearer t0ken"
    assert registry.seen[1]["Authorization"] == "Basic " + base64.b64encode(b"ann:pw").decode()
    assert "Authorization" not in registry.seen[2]


def test_from_environment_reads_mlflows_variables_once(
    registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ann")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    client = RegistryClient.from_environment(timeout_s=2)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", DEAD_REGISTRY)  # read once: later changes ignored
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0ken")
    assert client.resolve_version("models:/m@production") == "7"
    assert registry.seen[0]["Authorization"] == "Basic " + base64.b64encode(b"ann:pw").decode()


def test_a_client_never_changes_os_environ(
    registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", DEAD_REGISTRY)  # the client must not look here
    before = dict(os.environ)
    client = RegistryClient(registry.uri, timeout_s=2, max_retries=0, token="t0ken")
    assert client.resolve_version("models:/m@production") == "7"
    with pytest.raises(RegistryError, match="could not download models:/m/7"):
        client.fetch("models:/m@production", tmp_path)  # the fake has no artifacts to give
    assert dict(os.environ) == before
    assert registry.seen[0]["Authorization"] == "Bearer t0ken"
    assert len(registry.seen) > 1, "the download did not ask this client's registry"


def test_the_download_child_process_gets_the_clients_configuration(
    registry: FakeRegistry, tmp_path: Path
) -> None:
    # a fresh interpreter without mlflow, as a serving process is: it downloads in a child
    script = (
        "import sys; from pathlib import Path; from shared.registry import RegistryClient\n"
        "client = RegistryClient(sys.argv[1], timeout_s=2, max_retries=0, token='t0ken')\n"
        "client.fetch('models:/m@production', Path(sys.argv[2]))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        [sys.executable, "-c", script, registry.uri, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert "could not download models:/m/7" in done.stderr
    asked_by_the_child = registry.seen[1:]  # after the parent's own alias lookup
    assert asked_by_the_child
    assert {call.get("Authorization") for call in asked_by_the_child} == {"Bearer t0ken"}


def test_two_clients_in_one_process_each_talk_to_their_own_registry() -> None:
    with fake_registry("7") as first, fake_registry("8") as second:
        a = RegistryClient(first.uri, timeout_s=2, token="for-first")
        b = RegistryClient(second.uri, timeout_s=2, token="for-second")
        versions = [client.resolve_version("models:/m@production") for client in (a, b, a, b)]
    assert versions == ["7", "8", "7", "8"]
    assert [call["Authorization"] for call in first.seen] == ["Bearer for-first"] * 2
    assert [call["Authorization"] for call in second.seen] == ["Bearer for-second"] * 2


def test_an_unknown_model_is_not_found_not_unreachable(
    registry: FakeRegistry, tmp_path: Path
) -> None:
    client = RegistryClient(registry.uri, timeout_s=2)
    with pytest.raises(RegistryError, match="does not exist in the registry"):
        client.fetch("models:/other@production", tmp_path)
    with pytest.raises(RegistryError, match="does not exist in the registry"):
        client.fetch("models:/m/3", tmp_path)
    assert registry.seen[-1]["path"] == "/api/2.0/mlflow/model-versions/get"
