"""Locust entry point: one user class per service (the one FastHttpUser of
loadtests/users/<name>.py, for every service of services/catalog.py), chosen by SERVICES (comma
list, default all).

    SERVICES=classify,text locust -f loadtests/locustfile.py --headless -u 8 -r 2 -t 1m

URLs come from <SERVICE>_URL, e.g. CLASSIFY_URL (default: the catalog's local ports), think
time from THINK_TIME, weights from <SERVICE>_WEIGHT / <SERVICE>_TASKS (loadtests/users/common.py).
With LOADTEST_SAMPLES set, every request's exact latency (Locust's own percentiles are rounded to
whole milliseconds) is written there as JSON when the run ends;
`make loadtest` and the regression gate read it.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from locust import User, events

from services.catalog import NAMES

ALL = NAMES
chosen = [s.strip() for s in os.environ.get("SERVICES", ",".join(ALL)).split(",") if s.strip()]
unknown = sorted(set(chosen) - set(ALL))
if unknown:
    raise SystemExit(f"SERVICES: unknown {unknown}; known: {', '.join(ALL)}")


def user_classes(services: list[str]) -> dict[str, type]:
    """The Locust users that loadtests/users/<name>.py defines, for each of `services`."""
    found: dict[str, type] = {}
    for name in services:
        module = importlib.import_module(f"loadtests.users.{name}")
        found |= {
            attr: value
            for attr, value in vars(module).items()
            if isinstance(value, type)
            and issubclass(value, User)
            and value.__module__ == module.__name__
        }
    return found


# Locust runs the user classes it finds in this module's namespace
globals().update(user_classes(chosen))

_times: dict[str, list[float]] = defaultdict(list)
_failures: dict[str, int] = defaultdict(int)
_errors: dict[str, str] = {}
_window: dict[str, float] = {}


@events.test_start.add_listener
def _started(**_: Any) -> None:
    _window["started"] = time.time()


@events.test_stop.add_listener
def _stopped(**_: Any) -> None:
    _window["stopped"] = time.time()


@events.request.add_listener
def _record(name: str, response_time: float, exception: BaseException | None, **_: Any) -> None:
    if exception is None:
        _times[name].append(response_time)
    else:
        _failures[name] += 1
        _errors.setdefault(name, str(exception)[:300])


@events.quitting.add_listener
def _write(**_: Any) -> None:
    target = os.environ.get("LOADTEST_SAMPLES")
    if not target:
        return
    samples = {
        "started": _window.get("started", time.time()),
        "stopped": _window.get("stopped", time.time()),
        "endpoints": {
            name: {
                "times_ms": _times.get(name, []),
                "failures": _failures.get(name, 0),
                "error": _errors.get(name, ""),
            }
            for name in sorted(set(_times) | set(_failures))
        },
    }
    Path(target).write_text(json.dumps(samples))
