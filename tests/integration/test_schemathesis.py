"""Schemathesis against a real service process's own OpenAPI schema: every default check plus
the rest, a few hundred generated requests per operation. Zero server errors, zero schema- or
status-conformance failures.

One check is left out: `positive_data_acceptance` expects every schema-valid body to be
accepted, but an image field is a base64 string in the schema and a string that decodes to
bytes that are not an image is a 400 by design; no JSON schema can say "a PNG".
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import tinymodels, tinysimilarity
from tests.procs import BIN, free_port, running, wait_http
from tests.unit.conftest import DEAD_REGISTRY

EXAMPLES = 200
#: service → how to place a tiny verified bundle in its cache (served without a registry)
SEEDERS: dict[str, Callable[[Path], object]] = {
    "classify": tinymodels.seed_cache,
    "similarity": tinysimilarity.seed_cache,
}


@pytest.mark.parametrize("service", sorted(SEEDERS))
def test_service_survives_schemathesis(service: str, tmp_path: Path) -> None:
    SEEDERS[service](tmp_path / "cache")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "MLFLOW_TRACKING_URI": DEAD_REGISTRY,  # served from the verified cache
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "ONNX_INTRA_OP_THREADS": "1",
        "LOG_LEVEL": "WARNING",
    }
    cmd = [sys.executable, "-m", f"services.{service}", "--port", str(port)]
    with running(cmd, tmp_path / "service.log", env) as proc:
        wait_http(f"{url}/readyz", proc, tmp_path / "service.log")
        result = subprocess.run(
            [
                str(BIN / "st"),
                "run",
                f"{url}/openapi.json",
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance",
                "--max-examples",
                str(EXAMPLES),
                "--seed",
                "1",
                "--workers",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert proc.poll() is None, "the service died under fuzzing"
    summary = result.stdout[-6000:]
    assert result.returncode == 0, summary
    assert "generated" in summary and "0 unique failures" not in summary.replace("no ", "")
