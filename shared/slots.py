"""A declared model's slot: where it loads from and the version being served."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.batching import Batcher
from shared.drift import DriftMonitor
from shared.registry import ModelURI
from shared.service import ModelService, ModelSpec
from shared.settings import ServingSettings
from shared.sources import LocalSource, ModelSource, RegistrySource


@dataclass
class LoadedModel:
    """A loaded model instance, where it came from, and its batcher."""

    model: ModelService
    key: str
    name: str
    version: str
    variant: str
    run_id: str | None
    uri: str
    from_cache_only: bool
    load_seconds: float
    batcher: Batcher
    drift: DriftMonitor | None = None
    #: production, or challenger (the rollout's second version, shared/rollout.py)
    role: str = "production"

    def info(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "variant": self.variant}

    def details(self) -> dict[str, Any]:
        """What GET /v1/model says of this model."""
        return {
            **self.info(),
            "uri": self.uri,
            "source_run": self.run_id,
            "from_cache_only": self.from_cache_only,
            "load_seconds": round(self.load_seconds, 3),
            "role": self.role,
        }


UNCHECKED = "not looked up yet"


class ModelSlot:
    """One declared model: its source and the version being served (None until loaded), and
    for a rollout the challenger's source and version (None while its alias names nothing)."""

    def __init__(
        self,
        spec: ModelSpec,
        source: ModelSource | None,
        variant: str,
        challenger_source: ModelSource | None = None,
    ) -> None:
        self.spec = spec
        self.source = source  # None: turned off by its settings (an optional model)
        self.variant = variant
        self.current: LoadedModel | None = None
        self.last_error: str | None = "the model is loading"
        self.challenger_source = challenger_source  # None: no rollout for this model
        self.challenger: LoadedModel | None = None
        #: why no challenger is served (its alias is looked up once production is ready)
        self.challenger_error: str | None = UNCHECKED

    def source_for(self, role: str) -> ModelSource | None:
        return self.challenger_source if role == "challenger" else self.source

    @property
    def enabled(self) -> bool:
        return self.source is not None


def model_source(spec: ModelSpec, settings: ServingSettings, primary: bool) -> ModelSource | None:
    """The source a declared model loads from, as its settings say (None: turned off)."""
    if spec.local_setting and (directory := getattr(settings, spec.local_setting)):
        return LocalSource(Path(directory), f"{spec.registered_model}-local", spec.key)
    uri = str(getattr(settings, spec.uri_setting) or "")
    if not uri:
        if spec.optional and not primary:
            return None
        uri = f"models:/{spec.registered_model}@production"
    return RegistrySource(uri, settings.registry_client(), settings.model_cache_dir)


def challenger_source(source: ModelSource | None, settings: ServingSettings) -> ModelSource | None:
    """The source of the version behind CHALLENGER_ALIAS beside a registry model (None for a
    local directory, or with CHALLENGER_ALIAS empty)."""
    if not settings.challenger_alias or not isinstance(source, RegistrySource):
        return None
    name = ModelURI.parse(source.uri).name
    uri = f"models:/{name}@{settings.challenger_alias}"
    return RegistrySource(uri, settings.registry_client(), settings.model_cache_dir)
