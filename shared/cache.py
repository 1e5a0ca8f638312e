"""The local model cache: verified bundles by name and version, and the last known aliases,
so a service can start from it when the registry is unreachable."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared.bundle import Bundle, open_bundle
from shared.errors import RegistryError

if TYPE_CHECKING:
    from shared.registry import ModelURI

log = logging.getLogger("modelplane.registry")


@dataclass(frozen=True)
class FetchedModel:
    """A verified bundle and where it came from."""

    bundle: Bundle
    name: str
    version: str
    run_id: str | None
    from_cache_only: bool


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
        _write_atomically(path, aliases)

    def forget_alias(self, name: str, alias: str) -> None:
        """The registry says `alias` names nothing now: a later outage must not revive it."""
        path = self._aliases_path(name)
        aliases = json.loads(path.read_text()) if path.is_file() else {}
        if aliases.pop(alias, None) is not None:
            _write_atomically(path, aliases)

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


def _write_atomically(path: Path, aliases: dict[str, str]) -> None:
    """Replace `path` in one rename from a temporary file of this process and thread only:
    replicas sharing a cache (one volume) never rename each other's half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(aliases, indent=2))
    tmp.replace(path)


def from_cache_only(ref: ModelURI, cache: ModelCache, cause: Exception) -> FetchedModel:
    """The verified cached copy `ref` names, when the registry cannot be asked."""
    version = ref.version or cache.alias_version(ref.name, ref.alias or "")
    bundle = cache.open(ref.name, version) if version else None
    if bundle is None:
        raise RegistryError(
            f"the registry is unreachable ({type(cause).__name__}: {cause}) and no cached copy of "
            f"{ref} exists in {cache.root}"
        ) from cause
    log.warning("registry unreachable; serving %s version %s from the verified cache", ref, version)
    return FetchedModel(bundle, ref.name, str(version), None, from_cache_only=True)
