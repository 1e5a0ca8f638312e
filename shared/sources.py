"""Where a model comes from: the MLflow registry (verified cache) or a local directory.

The runtime loads every model through this one interface, so no service copies the load path.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from shared.bundle import Bundle, read_manifest
from shared.cache import FetchedModel, ModelCache
from shared.errors import BundleError
from shared.registry import ModelURI, RegistryClient

LOCAL_VERSION = "local"


class ModelSource(ABC):
    """Fetches a verified bundle and says which version it names now (to follow moves)."""

    #: what the source reads, for logs and GET /v1/model
    uri: str

    @abstractmethod
    def fetch(self) -> FetchedModel:
        """The bundle to load; raises when none can be had."""

    def current_version(self) -> str | None:
        """The version the source names now (None: it never moves, nothing to watch)."""
        return None


class RegistrySource(ModelSource):
    """`models:/name@alias` or `models:/name/version` through the registry's verified cache."""

    def __init__(self, uri: str, client: RegistryClient, cache_dir: Path) -> None:
        self.uri = uri
        self.client = client
        self.cache_dir = cache_dir
        self.watched = ModelURI.parse(uri).alias is not None  # a version number never moves

    def fetch(self) -> FetchedModel:
        return self.client.fetch(self.uri, self.cache_dir)

    def current_version(self) -> str | None:
        return self.client.resolve_version(self.uri) if self.watched else None

    def cached_version(self) -> str | None:
        """The version the verified cache last saw behind this alias (None: none)."""
        ref = ModelURI.parse(self.uri)
        return ModelCache(self.cache_dir).alias_version(ref.name, ref.alias or "")

    def forget_cached_alias(self) -> None:
        ref = ModelURI.parse(self.uri)
        if ref.alias:
            ModelCache(self.cache_dir).forget_alias(ref.name, ref.alias)


class LocalSource(ModelSource):
    """A directory on disk served as it is (a diffusers pipeline folder, say); its manifest
    when it has one, else a minimal one. Served as version and variant `local`."""

    def __init__(self, directory: Path, name: str, task: str) -> None:
        self.directory = Path(directory).resolve()
        self.uri = str(self.directory)
        self.name = name
        self.task = task

    def fetch(self) -> FetchedModel:
        if not self.directory.is_dir():
            raise BundleError(f"{self.directory} is not a directory")
        try:
            manifest = read_manifest(self.directory)
        except BundleError:
            manifest = {"task": self.task, "name": self.name, "variants": {}, "files": {}}
        bundle = Bundle(self.directory, {**manifest, "default_variant": LOCAL_VERSION})
        name = str(manifest.get("name", self.name))
        return FetchedModel(bundle, name, LOCAL_VERSION, None, from_cache_only=False)
