"""Prometheus config and rules, checked by the real promtool: syntax, and unit tests proving
each alert fires on a series that breaks it and stays quiet on a healthy one (that every service
is scraped and has a p99 objective is tests/unit/test_catalog.py's)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OBS = ROOT / "observability"
RULE_FILES = sorted((OBS / "rules").glob("*.yml"))
RULE_TESTS = sorted((OBS / "tests").glob("*.yml"))


def promtool(*args: str) -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool missing: `make test` installs Debian's prometheus package (TOOLS)"
    done = subprocess.run(
        [tool, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


def rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def alert_names() -> set[str]:
    return {rule["alert"] for rule in rules() if "alert" in rule}


def test_prometheus_config_and_its_rule_files_pass_promtool_check() -> None:
    out = promtool("check", "config", "observability/prometheus.yml")
    for path in RULE_FILES:
        assert str(path.relative_to(OBS)) in out, f"{path.name} is not loaded by prometheus.yml"


def test_rule_files_pass_promtool_check_rules() -> None:
    assert RULE_FILES, "no rule files under observability/rules"
    out = promtool("check", "rules", *(str(p) for p in RULE_FILES))
    assert f"SUCCESS: {len(rules())} rules found" in out


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    assert RULE_TESTS, "no promtool rule tests under observability/tests"
    out = promtool("test", "rules", *(str(p) for p in RULE_TESTS))
    assert "SUCCESS" in out


def test_the_issue_asks_for_these_alerts() -> None:
    expected = {
        "ModelplaneLatencySLOBreached",
        "ModelplaneHighErrorRatio",
        "ModelplaneServiceNotReady",
        "ModelplaneQueueSaturated",
        "ModelplaneModelLoadFailing",
        "ModelplaneModelVersionChanged",
        "ModelplaneDataDrift",
    }
    assert expected <= alert_names()


@pytest.mark.parametrize("alert", sorted(alert_names()))
def test_every_alert_has_a_firing_and_a_quiet_unit_test(alert: str) -> None:
    cases = [
        case
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == alert
    ]
    assert any(case.get("exp_alerts") for case in cases), f"{alert} never fires in a test"
    assert any(not case.get("exp_alerts") for case in cases), f"{alert} is never shown quiet"
