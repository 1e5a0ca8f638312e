"""MLflow model registry: resolve `models:/name@alias`, download into a verified cache, register.

The registry is never on the request path: a service resolves and downloads once at start (and
when it reloads), and serves from the verified local cache when the registry is unreachable.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

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
    """Point MLflow at `tracking_uri` and make unreachable registries fail fast, not in minutes."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, int(timeout_s)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


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
    client = _client()
    if ref.alias:
        mv = client.get_model_version_by_alias(ref.name, ref.alias)
    else:
        mv = client.get_model_version(ref.name, str(ref.version))
    return str(mv.version), mv.run_id, (mv.tags or {}).get(BUNDLE_SHA_TAG, "")


def resolve_version(uri: str) -> str:
    """The version `uri` names in the registry now (an alias is looked up; raises if down)."""
    return _resolve(ModelRef.parse(uri))[0]


def _download(ref_name: str, version: str, into: Path) -> Path:
    import mlflow

    source = _client().get_model_version_download_uri(ref_name, version)
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
