"""The export stage: `python -m training.export <task>`."""

from __future__ import annotations

import sys
from pathlib import Path

from shared.cache import FetchedModel
from shared.errors import BundleError, RegistryError
from shared.registration import use_tracking_server


def fetch_source(tracking_uri: str, uri: str, cache_dir: Path) -> FetchedModel | None:
    """The registered model an exporter reads (export-sized registry timeouts); None after
    printing why when it cannot be had, so the command exits 2."""
    registry = use_tracking_server(tracking_uri, timeout_s=30, max_retries=3)
    print(f"[export] fetching {uri} from {tracking_uri}", flush=True)
    try:
        return registry.fetch(uri, cache_dir)
    except (RegistryError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
