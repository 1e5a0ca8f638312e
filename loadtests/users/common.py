"""What every service's Locust user shares: its URL, think time and task weights, all from
the environment, and the name its requests are reported under."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from locust import between, constant

from loadtests.users import service_url

__all__ = ["endpoint", "service_url", "think_time", "user_weight", "weighted_tasks"]


def think_time() -> Callable[..., float]:
    """THINK_TIME: "MIN,MAX" seconds between a user's requests (one number: constant; 0: none,
    a closed loop that measures throughput)."""
    parts = [float(p) for p in os.environ.get("THINK_TIME", "0.1,0.5").split(",")]
    if len(parts) == 1:
        return constant(parts[0])
    return between(parts[0], parts[1])


def user_weight(service: str) -> int:
    """`<SERVICE>_WEIGHT`: how many of the spawned users this service gets, relatively."""
    return int(os.environ.get(f"{service.upper()}_WEIGHT", "1"))


def weighted_tasks(
    service: str, defaults: dict[str, tuple[Callable[..., Any], int]]
) -> dict[Callable[..., Any], int]:
    """Task weights, overridable by `<SERVICE>_TASKS="png=3,json=1"` (0 turns a task off)."""
    weights = {name: weight for name, (_, weight) in defaults.items()}
    spec = os.environ.get(f"{service.upper()}_TASKS", "")
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = item.partition("=")
        if name not in weights:
            raise ValueError(
                f"{service.upper()}_TASKS: unknown task {name!r}; one of {sorted(weights)}"
            )
        weights[name] = int(value)
    chosen = {defaults[name][0]: weight for name, weight in weights.items() if weight > 0}
    if not chosen:
        raise ValueError(f"{service.upper()}_TASKS turns every task off")
    return chosen


def endpoint(service: str, method: str, route: str, form: str = "") -> str:
    """The name a request is reported under: service, method, route template and body form."""
    return f"{service} {method} {route}" + (f" [{form}]" if form else "")
