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
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.bundle import MANIFEST, Bundle, open_bundle, sha256_file
from shared.errors import BundleError, RegistryError

log = logging.getLogger("modelplane.registry")

BUNDLE_SHA_TAG = "bundle_manifest_sha256"
_URI = re.compile(
    r"^models:/(?P<name>[A-Za-z0-9_.\-]+)(?:@(?P<alias>[A-Za-z0-9_\-]+)|/(?P<version>\d+))$"
)


@dataclass(frozen=True)
class ModelRef:
    """A parsed `models:/name@alias` or `models:/name/version` URI."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, uri: str) -> ModelRef:
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
class FetchedModel:
    """A verified bundle and where it came from."""

    bundle: Bundle
    name: str
    version: str
    run_id: str | None
    from_cache_only: bool


def configure_client(tracking_uri: str, timeout_s: float = 5.0, max_retries: int = 1) -> None:
    """Point MLflow at `tracking_uri` and make unreachable registries fail fast, not in minutes.

    Only environment variables are set unless this process already uses mlflow: a serving
    process never imports it (150 MB of resident memory and over a second of start-up); it
    resolves versions over MLflow's REST API and downloads in a child process."""
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    os.environ["MLFLOW_REGISTRY_URI"] = tracking_uri
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, int(timeout_s)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    if "mlflow" in sys.modules:  # an explicit earlier set_tracking_uri would win over the env
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


class RegistryHTTPError(RegistryError):
    """An error answer of MLflow's REST API, with its `error_code`."""

    def __init__(self, message: str, error_code: str) -> None:
        super().__init__(message)
        self.error_code = error_code


def _rest_get(endpoint: str, **params: str) -> dict[str, Any]:
    """GET `<tracking URI>/api/2.0/mlflow/<endpoint>` with MLflow's auth variables honoured."""
    base = os.environ.get("MLFLOW_TRACKING_URI", "").rstrip("/")
    url = f"{base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(params)}"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {token}")
    elif user := os.environ.get("MLFLOW_TRACKING_USERNAME"):
        secret = f"{user}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}".encode()
        request.add_header("Authorization", f"Basic {base64.b64encode(secret).decode()}")
    timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "5"))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            body = {}
        code = body.get("error_code", f"HTTP_{exc.code}")
        raise RegistryHTTPError(f"{code}: {body.get('message', exc.reason)}", code) from exc


class ModelCache:
    """`<root>/<name>/<version>/` verified bundles plus `<root>/<name>/aliases.json`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def version_dir(self, name: str, version: str) -> Path:
        return self.root / name / str(version)

    def _aliases_path(self, name: str) -> Path:
        return self.root / name / "aliases.json"

    def remember_alias(self, name: str, alias: str, version: str) -> None:
        path = self._aliases_path(name)
        aliases = json.loads(path.read_text()) if path.is_file() else {}
        aliases[alias] = str(version)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(aliases, indent=2))
        tmp.replace(path)

    def alias_version(self, name: str, alias: str) -> str | None:
        path = self._aliases_path(name)
        if not path.is_file():
            return None
        return json.loads(path.read_text()).get(alias)

    def open(self, name: str, version: str) -> Bundle | None:
        """The verified cached bundle, or None when absent; a corrupt copy raises BundleError."""
        directory = self.version_dir(name, version)
        if not directory.exists():
            return None
        return open_bundle(directory)

    def discard(self, name: str, version: str) -> None:
        shutil.rmtree(self.version_dir(name, version), ignore_errors=True)

    def store(self, name: str, version: str, downloaded: Path) -> Bundle:
        """Verify a downloaded bundle and move it into place atomically."""
        bundle = open_bundle(downloaded)
        target = self.version_dir(name, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        downloaded.rename(target)
        return Bundle(path=target, manifest=bundle.manifest)


def _resolve(ref: ModelRef) -> tuple[str, str | None, str]:
    """(version, run_id, manifest sha256 tag) for a reference, asking the registry."""
    if not os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://")):
        client = _client()  # a file or database store: only mlflow itself can read it
        if ref.alias:
            mv = client.get_model_version_by_alias(ref.name, ref.alias)
        else:
            mv = client.get_model_version(ref.name, str(ref.version))
        return str(mv.version), mv.run_id, (mv.tags or {}).get(BUNDLE_SHA_TAG, "")
    if ref.alias:
        found = _rest_get("registered-models/alias", name=ref.name, alias=ref.alias)
    else:
        found = _rest_get("model-versions/get", name=ref.name, version=str(ref.version))
    mv = found["model_version"]
    tags = {tag["key"]: tag.get("value", "") for tag in mv.get("tags", [])}
    return str(mv["version"]), mv.get("run_id") or None, tags.get(BUNDLE_SHA_TAG, "")


def resolve_version(uri: str) -> str:
    """The version `uri` names in the registry now (an alias is looked up; raises if down)."""
    return _resolve(ModelRef.parse(uri))[0]


def _download(name: str, version: str, into: Path) -> Path:
    """Download a version's artifacts with mlflow (any artifact store it supports): in this
    process when it already uses mlflow, else in a child process (`python -m shared.registry
    download`), so a serving process never carries mlflow's memory."""
    if "mlflow" in sys.modules:
        return _download_here(name, version, into)
    done = subprocess.run(
        [sys.executable, "-m", "shared.registry", "download", name, version, str(into)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RegistryError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "")
    return Path(done.stdout.strip().splitlines()[-1])


def _download_here(name: str, version: str, into: Path) -> Path:
    import mlflow

    source = _client().get_model_version_download_uri(name, version)
    local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(into))
    return Path(local)


def fetch(uri: str, cache_dir: Path) -> FetchedModel:
    """Resolve `uri`, download it unless a verified copy is cached, and return the bundle.

    A corrupt cached copy is discarded and downloaded again; when the registry is unreachable
    the alias is answered from the cache's last known mapping, and only a verified copy is used.
    """
    ref = ModelRef.parse(uri)
    cache = ModelCache(cache_dir)
    try:
        version, run_id, manifest_sha = _resolve(ref)
    except Exception as exc:
        if _is_not_found(exc):
            raise RegistryError(f"{ref} does not exist in the registry: {exc}") from exc
        return _from_cache_only(ref, cache, exc)

    try:
        cached = cache.open(ref.name, version)
    except BundleError as exc:
        log.warning("discarding corrupt cached bundle %s/%s: %s", ref.name, version, exc)
        cache.discard(ref.name, version)
        cached = None
    if cached is not None and _manifest_matches(cached, manifest_sha):
        bundle = cached
    else:
        bundle = _download_verified(ref.name, version, manifest_sha, cache)
    if ref.alias:
        cache.remember_alias(ref.name, ref.alias, version)
    return FetchedModel(bundle, ref.name, version, run_id, from_cache_only=False)


def _manifest_matches(bundle: Bundle, expected_sha: str) -> bool:
    return not expected_sha or sha256_file(bundle.path / MANIFEST) == expected_sha


def _download_verified(name: str, version: str, manifest_sha: str, cache: ModelCache) -> Bundle:
    cache.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.root, prefix=".download-") as tmp:
        try:
            local = _download(name, version, Path(tmp))
        except Exception as exc:
            raise RegistryError(f"could not download models:/{name}/{version}: {exc}") from exc
        if manifest_sha and sha256_file(local / MANIFEST) != manifest_sha:
            raise BundleError(
                f"models:/{name}/{version}: manifest checksum differs from the registry's record; "
                "the stored bundle was altered, refusing to load it"
            )
        staged = Path(tmp) / "bundle"
        local.rename(staged)
        return cache.store(name, version, staged)


def _from_cache_only(ref: ModelRef, cache: ModelCache, cause: Exception) -> FetchedModel:
    version = ref.version or cache.alias_version(ref.name, ref.alias or "")
    bundle = cache.open(ref.name, version) if version else None
    if bundle is None:
        raise RegistryError(
            f"the registry is unreachable ({type(cause).__name__}: {cause}) and no cached copy of "
            f"{ref} exists in {cache.root}"
        ) from cause
    log.warning("registry unreachable; serving %s version %s from the verified cache", ref, version)
    return FetchedModel(bundle, ref.name, str(version), None, from_cache_only=True)


def _is_not_found(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}


def register(
    local_dir: Path,
    model_name: str,
    *,
    alias: str | None,
    tags: dict[str, str] | None = None,
    artifact_path: str = "bundle",
) -> str:
    """Log `local_dir` (a bundle) to the active MLflow run and register it as a new version.

    Returns the new version. The manifest's sha256 is stored as a version tag so a download
    can be checked against what was registered.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    run = mlflow.active_run()
    if run is None:
        raise RegistryError("register() needs an active MLflow run")
    open_bundle(local_dir)  # never register a bundle that does not verify
    mlflow.log_artifacts(str(local_dir), artifact_path)
    client = _client()
    try:
        client.create_registered_model(model_name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    all_tags = {**(tags or {}), BUNDLE_SHA_TAG: sha256_file(Path(local_dir) / MANIFEST)}
    mv = client.create_model_version(
        model_name,
        source=f"{run.info.artifact_uri}/{artifact_path}",
        run_id=run.info.run_id,
        tags=all_tags,
    )
    if alias:
        client.set_registered_model_alias(model_name, alias, mv.version)
    log.info("registered %s version %s%s", model_name, mv.version, f" @{alias}" if alias else "")
    return str(mv.version)


def main(argv: list[str] | None = None) -> int:
    """`python -m shared.registry download NAME VERSION INTO`: prints the downloaded path."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 4 or args[0] != "download":
        print("usage: python -m shared.registry download NAME VERSION INTO", file=sys.stderr)
        return 2
    try:
        print(_download_here(args[1], args[2], Path(args[3])))
    except Exception as exc:  # noqa: BLE001 - reported to the parent on the last stderr line
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
