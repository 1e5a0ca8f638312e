"""The Grafana dashboard and the Prometheus rules query only metrics the services really export:
every PromQL expression is parsed for metric names, which are compared with a real /metrics
scrape of a running app; and every expression is valid PromQL (checked by promtool)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.tinydrift import seed_drift_cache
from tests.unit.conftest import png_bytes

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "observability"
DASHBOARDS = sorted((OBS / "grafana" / "provisioning" / "dashboards").glob("*.json"))
RULE_FILES = sorted((OBS / "rules").glob("*.yml"))
#: series Prometheus makes itself for every target (not exported by a service)
PROMETHEUS_SERIES = {"up"}

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip
_IDENT = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names (in braces or by/on lists), strings or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in _IDENT.finditer(text):
        word = match.group()
        if word.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def test_metric_names_reads_selectors_not_functions_labels_or_strings() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{route!~"/x|y",s="$s"}'
        "[$__rate_interval]))) / on (service) group_left b:rec > bool 1e3 or c offset 5m"
        ' + label_replace(vector(1), "service", "d_not_metric", "", "")'
    )
    assert metric_names(expr) == {"a_bucket", "b:rec", "c"}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and template variable query."""
    queries = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                queries.append((f"{path.name}: {panel['title']}", target["expr"]))
        for variable in dashboard["templating"]["list"]:
            found = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["definition"])
            assert found, f"unexpected variable query {variable['definition']}"
            queries.append((f"{path.name}: ${variable['name']}", found.group(1)))
    return queries


def rule_definitions() -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Recording rule name -> expr, and (alert, expr) pairs."""
    recorded: dict[str, str] = {}
    alerts = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    recorded[rule["record"]] = rule["expr"]
                else:
                    alerts.append((rule["alert"], rule["expr"]))
    return recorded, alerts


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """The `client` serves a bundle with a drift reference, so drift gauges are exported."""
    seed_drift_cache(tmp_path / "cache")
    return tmp_path / "cache"


def scraped_series(client: TestClient) -> set[str]:
    """Sample names of a real /metrics scrape after one real request went through the model."""
    digit = np.zeros((8, 8), dtype=np.uint8)
    digit[2:6, 3:5] = 255
    answer = client.post(
        "/v1/classify", content=png_bytes(digit), headers={"content-type": "image/png"}
    )
    assert answer.status_code == 200, answer.text
    scrape = client.get("/metrics")
    assert scrape.status_code == 200
    return {
        sample.name
        for family in text_string_to_metric_families(scrape.text)
        for sample in family.samples
    }


def test_dashboard_covers_what_the_issue_asks_for() -> None:
    assert DASHBOARDS, "no dashboard JSON under observability/grafana/provisioning/dashboards"
    names = set().union(*(metric_names(expr) for _, expr in dashboard_queries()))
    for needed in (
        "modelplane_requests_total",
        "modelplane_request_duration_seconds_bucket",
        "modelplane_batch_size_bucket",
        "modelplane_queue_wait_seconds_bucket",
        "modelplane_model_info",
        "modelplane_ready",
        "modelplane_drift_p_value",
        "modelplane_prediction_log_dropped_total",
    ):
        assert needed in names, f"no panel shows {needed}"
    dashboard = json.loads(DASHBOARDS[0].read_text())
    assert any(p.get("repeat") == "service" for p in dashboard["panels"]), "no per-service row"


def test_every_dashboard_query_names_only_exported_metrics(client: TestClient) -> None:
    exported = scraped_series(client)
    recorded, _ = rule_definitions()
    for where, expr in dashboard_queries():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - exported - set(recorded)
        assert not unknown, f"{where}: {sorted(unknown)} not exported by the services"


def test_every_rule_names_only_exported_metrics(client: TestClient) -> None:
    exported = scraped_series(client)
    recorded, alerts = rule_definitions()
    for name, expr in [*recorded.items(), *alerts]:
        unknown = metric_names(expr) - exported - set(recorded) - PROMETHEUS_SERIES
        assert not unknown, f"{name}: {sorted(unknown)} not exported by the services"


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query (Grafana's variables filled in) as a recording rule."""
    rules = [
        {
            "record": f"dashboard:query_{i}",
            "expr": expr.replace("$__rate_interval", "1m")
            .replace("$__range", "1h")
            .replace("$service", "classify"),
        }
        for i, (_, expr) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    tool = shutil.which("promtool")
    assert tool, "promtool missing: `make test` installs Debian's prometheus package (TOOLS)"
    done = subprocess.run(
        [tool, "check", "rules", "--lint=none", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
