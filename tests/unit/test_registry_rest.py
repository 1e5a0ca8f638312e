"""The REST lookups a serving process makes instead of importing mlflow, against a real HTTP
server on loopback that answers as MLflow's registry API does (and records what it was sent)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import pytest

from shared.errors import RegistryError
from shared.registry import BUNDLE_SHA_TAG, configure_client, fetch, resolve_version

VERSION = {"name": "m", "version": "7", "run_id": "r1", "tags": [{"key": BUNDLE_SHA_TAG}]}


class Registry(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, Any]]] = []

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        Registry.seen.append({"path": url.path, "query": query, **dict(self.headers)})
        if url.path == "/api/2.0/mlflow/registered-models/alias" and query["name"] == "m":
            self.answer(200, {"model_version": VERSION})
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


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for var in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Registry.seen = []
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    configure_client(uri, timeout_s=2)
    try:
        yield uri
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_an_alias_resolves_with_one_get(registry: str) -> None:
    assert resolve_version("models:/m@production") == "7"
    (call,) = Registry.seen
    assert call["path"] == "/api/2.0/mlflow/registered-models/alias"
    assert call["query"] == {"name": "m", "alias": "production"}
    assert "Authorization" not in call


def test_mlflow_auth_variables_are_sent(registry: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0ken")
    resolve_version("models:/m@production")
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ann")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    resolve_version("models:/m@production")
    assert Registry.seen[0]["Authorization"] == "Bearer t0ken"
    assert Registry.seen[1]["Authorization"] == "Basic " + base64.b64encode(b"ann:pw").decode()


def test_an_unknown_model_is_not_found_not_unreachable(registry: str, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="does not exist in the registry"):
        fetch("models:/other@production", tmp_path)
    with pytest.raises(RegistryError, match="does not exist in the registry"):
        fetch("models:/m/3", tmp_path)
    assert Registry.seen[-1]["path"] == "/api/2.0/mlflow/model-versions/get"
