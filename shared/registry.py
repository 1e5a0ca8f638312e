"""MLflow model registry: resolve `models:/name@alias`, download into a verified cache, register.

The registry is never on the request path: a service resolves and downloads once at start (and
when it reloads), and serves from the verified local cache when the registry is unreachable.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.bundle import MANIFEST, Bundle, sha256_file
from shared.cache import FetchedModel, ModelCache, from_cache_only
from shared.errors import BundleError, RegistryError

log = logging.getLogger("modelplane.registry")

BUNDLE_SHA_TAG = "bundle_manifest_sha256"
DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"
_URI = re.compile(
    r"^models:/(?P<name>[A-Za-z0-9_.\-]+)(?:@(?P<alias>[A-Za-z0-9_\-]+)|/(?P<version>\d+))$"
)


@dataclass(frozen=True)
class ModelURI:
    """A parsed `models:/name@alias` or `models:/name/version` URI."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, uri: str) -> ModelURI:
        match = _URI.match(uri.strip())
        if not match:
            raise RegistryError(
                f"model URI {uri!r} is not of the form models:/NAME@ALIAS or models:/NAME/VERSION"
            )
        return cls(match["name"], match["alias"], match["version"])

    def __str__(self) -> str:
        return (
            f"models:/{self.name}@{self.alias}"
            if self.alias
            else f"models:/{self.name}/{self.version}"
        )


@dataclass(frozen=True)
class ModelVersion:
    version: str
    tags: dict[str, str]
    #: milliseconds since the epoch, as MLflow records it
    created_ms: int


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    #: alias -> version
    aliases: dict[str, str]
    #: newest first
    versions: list[ModelVersion]


class RegistryHTTPError(RegistryError):
    """An error answer of MLflow's REST API, with its `error_code`."""

    def __init__(self, message: str, error_code: str) -> None:
        super().__init__(message)
        self.error_code = error_code


_AUTH_VARIABLES = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@dataclass(frozen=True)
class RegistryClient:
    """One MLflow registry and how to reach it: every call reads these fields, never os.environ.

    A serving process never imports mlflow (150 MB of resident memory and over a second of
    start-up): it resolves versions over MLflow's REST API and downloads in a child process
    that gets this configuration through its environment."""

    tracking_uri: str
    timeout_s: float = 5.0
    max_retries: int = 1
    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_environment(
        cls, tracking_uri: str | None = None, *, timeout_s: float = 5.0, max_retries: int = 1
    ) -> RegistryClient:
        """A client configured by MLflow's standard variables, read once (scripts, tests)."""
        env = os.environ
        return cls(
            tracking_uri=tracking_uri or env.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI,
            timeout_s=timeout_s,
            max_retries=max_retries,
            token=env.get("MLFLOW_TRACKING_TOKEN") or None,
            username=env.get("MLFLOW_TRACKING_USERNAME") or None,
            password=env.get("MLFLOW_TRACKING_PASSWORD") or None,
        )

    def resolve_version(self, uri: str) -> str:
        """The version `uri` names in the registry now (an alias is looked up; raises if down)."""
        return self._resolve(ModelURI.parse(uri))[0]

    def fetch(self, uri: str, cache_dir: Path) -> FetchedModel:
        """Resolve `uri`, download it unless a verified copy is cached, and return the bundle.

        A corrupt cached copy is discarded and downloaded again; when the registry is
        unreachable the alias is answered from the cache's last known mapping, and only a
        verified copy is used."""
        ref = ModelURI.parse(uri)
        cache = ModelCache(cache_dir)
        try:
            version, run_id, manifest_sha = self._resolve(ref)
        except Exception as exc:
            if is_not_found(exc):
                raise RegistryError(f"{ref} does not exist in the registry: {exc}") from exc
            return from_cache_only(ref, cache, exc)

        try:
            cached = cache.open(ref.name, version)
        except BundleError as exc:
            log.warning("discarding corrupt cached bundle %s/%s: %s", ref.name, version, exc)
            cache.discard(ref.name, version)
            cached = None
        if cached is not None and _manifest_matches(cached, manifest_sha):
            bundle = cached
        else:
            bundle = self._download_verified(ref.name, version, manifest_sha, cache)
        if ref.alias:
            cache.remember_alias(ref.name, ref.alias, version)
        return FetchedModel(bundle, ref.name, version, run_id, from_cache_only=False)

    def registered_models(self) -> list[RegisteredModel]:
        """Every registered model, by name, with its aliases and its versions newest first
        (MLflow's REST API: an http(s) tracking URI)."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            raise RegistryError(f"listing models needs an http(s) registry: {self.tracking_uri}")
        models = []
        for found in self._rest_pages("registered-models/search", "registered_models"):
            name = found["name"]
            versions = [
                ModelVersion(
                    str(mv["version"]),
                    {tag["key"]: tag.get("value", "") for tag in mv.get("tags", [])},
                    int(mv.get("creation_timestamp", 0)),
                )
                for mv in self._rest_pages(
                    "model-versions/search", "model_versions", filter=f"name='{name}'"
                )
            ]
            aliases = {a["alias"]: str(a["version"]) for a in found.get("aliases", [])}
            versions.sort(key=lambda v: int(v.version), reverse=True)
            models.append(RegisteredModel(name, aliases, versions))
        return sorted(models, key=lambda m: m.name)

    def _rest_pages(self, endpoint: str, key: str, **params: str) -> list[dict[str, Any]]:
        """Every item of a paged MLflow search endpoint."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            page = self._rest_get(endpoint, max_results="100", page_token=token, **params)
            items += page.get(key, [])
            token = page.get("next_page_token", "")
            if not token:
                return items

    def _authorization(self) -> str | None:
        """The Authorization header MLflow's auth variables would give: bearer, else basic."""
        if self.token:
            return f"Bearer {self.token}"
        if self.username:
            secret = f"{self.username}:{self.password or ''}".encode()
            return f"Basic {base64.b64encode(secret).decode()}"
        return None

    def _mlflow_client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def _rest_get(self, endpoint: str, **params: str) -> dict[str, Any]:
        """GET `<tracking URI>/api/2.0/mlflow/<endpoint>` with this client's auth and timeout."""
        base = self.tracking_uri.rstrip("/")
        url = f"{base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if header := self._authorization():
            request.add_header("Authorization", header)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read())
            except ValueError:
                body = {}
            code = body.get("error_code", f"HTTP_{exc.code}")
            raise RegistryHTTPError(f"{code}: {body.get('message', exc.reason)}", code) from exc

    def _resolve(self, ref: ModelURI) -> tuple[str, str | None, str]:
        """(version, run_id, manifest sha256 tag) for a reference, asking the registry."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            client = self._mlflow_client()  # a file or database store: only mlflow reads it
            if ref.alias:
                mv = client.get_model_version_by_alias(ref.name, ref.alias)
            else:
                mv = client.get_model_version(ref.name, str(ref.version))
            return str(mv.version), mv.run_id, (mv.tags or {}).get(BUNDLE_SHA_TAG, "")
        if ref.alias:
            found = self._rest_get("registered-models/alias", name=ref.name, alias=ref.alias)
        else:
            found = self._rest_get("model-versions/get", name=ref.name, version=str(ref.version))
        mv = found["model_version"]
        tags = {tag["key"]: tag.get("value", "") for tag in mv.get("tags", [])}
        return str(mv["version"]), mv.get("run_id") or None, tags.get(BUNDLE_SHA_TAG, "")

    def _download(self, name: str, version: str, into: Path) -> Path:
        """Download a version's artifacts with mlflow (any artifact store it supports): in this
        process when it already uses mlflow, else in a child process (`python -m
        shared.registry download`), so a serving process never carries mlflow's memory."""
        if "mlflow" in sys.modules:
            return self._download_here(name, version, into)
        done = subprocess.run(
            [sys.executable, "-m", "shared.registry", "download", name, version, str(into)],
            capture_output=True,
            text=True,
            check=False,
            env=self._child_environment(),
        )
        if done.returncode != 0:
            raise RegistryError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "")
        return Path(done.stdout.strip().splitlines()[-1])

    def _download_here(self, name: str, version: str, into: Path) -> Path:
        # in-process mlflow takes its HTTP timeout, retries and auth from this process's
        # environment (the variables from_environment read); the URIs are passed explicitly
        import mlflow

        source = self._mlflow_client().get_model_version_download_uri(name, version)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source,
            dst_path=str(into),
            tracking_uri=self.tracking_uri,
            registry_uri=self.tracking_uri,
        )
        return Path(local)

    def _child_environment(self) -> dict[str, str]:
        """os.environ plus this client as MLflow's variables, for a child process that uses
        mlflow (its HTTP client reads timeout, retries and auth from nowhere else)."""
        env = {key: value for key, value in os.environ.items() if key not in _AUTH_VARIABLES}
        env.update(
            MLFLOW_TRACKING_URI=self.tracking_uri,
            MLFLOW_REGISTRY_URI=self.tracking_uri,
            MLFLOW_HTTP_REQUEST_TIMEOUT=str(max(1, int(self.timeout_s))),
            MLFLOW_HTTP_REQUEST_MAX_RETRIES=str(self.max_retries),
            MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
        )
        if self.token:
            env["MLFLOW_TRACKING_TOKEN"] = self.token
        elif self.username:
            env["MLFLOW_TRACKING_USERNAME"] = self.username
            env["MLFLOW_TRACKING_PASSWORD"] = self.password or ""
        return env

    def _download_verified(
        self, name: str, version: str, manifest_sha: str, cache: ModelCache
    ) -> Bundle:
        cache.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache.root, prefix=".download-") as tmp:
            try:
                local = self._download(name, version, Path(tmp))
            except Exception as exc:
                raise RegistryError(f"could not download models:/{name}/{version}: {exc}") from exc
            if manifest_sha and sha256_file(local / MANIFEST) != manifest_sha:
                raise BundleError(
                    f"models:/{name}/{version}: manifest checksum differs from the registry's "
                    "record; the stored bundle was altered, refusing to load it"
                )
            staged = Path(tmp) / "bundle"
            local.rename(staged)
            return cache.store(name, version, staged)


def _manifest_matches(bundle: Bundle, expected_sha: str) -> bool:
    return not expected_sha or sha256_file(bundle.path / MANIFEST) == expected_sha


def is_not_found(exc: Exception) -> bool:
    """The registry said the model, version or alias does not exist (not: it is down)."""
    code = getattr(exc, "error_code", "")
    return code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}


def main(argv: list[str] | None = None) -> int:
    """`python -m shared.registry download NAME VERSION INTO`: prints the downloaded path."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 4 or args[0] != "download":
        print("usage: python -m shared.registry download NAME VERSION INTO", file=sys.stderr)
        return 2
    try:
        client = RegistryClient.from_environment()  # the parent passed its configuration
        print(client._download_here(args[1], args[2], Path(args[3])))
    except Exception as exc:  # noqa: BLE001 - reported to the parent on the last stderr line
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
