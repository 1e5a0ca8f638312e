"""Schemathesis against a real service process's own OpenAPI schema: every default check plus
the rest, a few hundred generated requests per operation. Zero server errors, zero schema- or
status-conformance failures.

One check is left out: `positive_data_acceptance` expects every schema-valid body to be
accepted, but an image field is a base64 string in the schema and a string that decodes to
bytes that are not an image is a 400 by design; no JSON schema can say "a PNG" (nor "a prompt
that names a digit", nor "a text that fits the model's tokens"). No operation is left out.

Expensive parameters are kept small by each service's own bounds, never by skipping them:
explain serves a 16x16 model (the cost of a request is bounded in model passes), generate a
tiny 8x8 diffusion model, text a tiny classifier and a summarizer whose decoder has 16
positions (its bound on generated tokens).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.procs import BIN
from tests.tinyserve import serve_cached
from tests.tinyservices import TINY

#: generated examples per operation
EXAMPLES = 200


@pytest.mark.parametrize("service", sorted(TINY))
def test_service_survives_schemathesis(service: str, tmp_path: Path) -> None:
    tiny = TINY[service]
    tiny.seed(tmp_path / "cache")
    with serve_cached(service, tmp_path / "cache", tmp_path / "service.log", tiny.env) as served:
        result = subprocess.run(
            [
                str(BIN / "st"),
                "run",
                f"{served.url}/openapi.json",
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
        assert served.proc.poll() is None, "the service died under fuzzing"
    summary = result.stdout[-6000:]
    print(f"{service}: {' '.join(summary.split('Test cases:')[-1].split()[:4])}")  # -s shows it
    assert result.returncode == 0, summary
    assert "generated" in summary and "0 unique failures" not in summary.replace("no ", "")
