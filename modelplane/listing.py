"""`modelplane models`: the registry's models and what each running service serves."""

from __future__ import annotations

import os
import time

import httpx

from services.catalog import SERVICES
from shared.registry import RegistryClient


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def served(url: str) -> str:
    """What the service at `url` serves now, from its /v1/model; or why it did not say."""
    try:
        answer = httpx.get(f"{url}/v1/model", timeout=2)
    except httpx.HTTPError:
        return "not running"
    if answer.status_code != 200:
        return f"HTTP {answer.status_code} from /v1/model"
    models = answer.json().get("models", {})
    return (
        ", ".join(f"{m['name']} v{m['version']} ({m['variant']})" for m in models.values())
        or "loading"
    )


def models_report(tracking_uri: str, per_model: int) -> str:
    registry = RegistryClient.from_environment(tracking_uri)
    rows = [["model", "version", "aliases", "gates", "variants", "registered"]]
    for model in registry.registered_models():
        aliases: dict[str, list[str]] = {}
        for alias, version in model.aliases.items():
            aliases.setdefault(version, []).append(alias)
        shown = model.versions if per_model <= 0 else model.versions[:per_model]
        for mv in shown:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(mv.created_ms / 1000))
            rows.append([
                model.name, mv.version, ",".join(sorted(aliases.get(mv.version, []))) or "-",
                mv.tags.get("gates", "-"), mv.tags.get("variants", "-") or "-", when,
            ])  # fmt: skip
    registered = table(rows) if len(rows) > 1 else "(no registered models)"
    services = [["service", "url", "serving"]]
    for svc in SERVICES:
        url = os.environ.get(f"{svc.name.upper()}_URL", svc.local_url)
        services.append([svc.name, url, served(url)])
    return f"registry {tracking_uri}\n\n{registered}\n\n{table(services)}"
