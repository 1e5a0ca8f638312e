"""The export stage: `python -m training.export <task>`."""

from __future__ import annotations

import sys
from pathlib import Path

from shared.errors import BundleError, RegistryError
from shared.registry import FetchedModel, configure_client, fetch


def fetch_source(tracking_uri: str, uri: str, cache_dir: Path) -> FetchedModel | None:
    """The registered model an exporter reads (export-sized registry timeouts); None after
    printing why when it cannot be had, so the command exits 2."""
    configure_client(tracking_uri, timeout_s=30, max_retries=3)
    print(f"[export] fetching {uri} from {tracking_uri}", flush=True)
    try:
        return fetch(uri, cache_dir)
    except (RegistryError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
