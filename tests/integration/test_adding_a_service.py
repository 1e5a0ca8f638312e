"""docs/adding-a-service.md's service, taken from the page and served as a real process:
its batched, direct and streaming endpoints answer as the guide says they do."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import httpx

from tests.procs import ROOT, free_port, running, wait_http
from tests.sse import parse_sse

GUIDE = ROOT / "docs" / "adding-a-service.md"
WEIGHTS = {"good": 1.5, "great": 2.0, "bad": -1.0}


def guide_code() -> str:
    """The page's service: its one python code block."""
    (code,) = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    return code


def test_the_guides_service_runs_all_three_lanes(tmp_path: Path) -> None:
    code = guide_code()
    assert len(code.splitlines()) < 120  # the guide promises a small service
    (tmp_path / "words.py").write_text(code)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.json").write_text(json.dumps(WEIGHTS))
    port = free_port()
    env = {"WORDS_DIR": str(model_dir), "PYTHONPATH": str(ROOT), "LOG_JSON": "false"}
    log = tmp_path / "words.log"
    command = [sys.executable, str(tmp_path / "words.py"), "--port", str(port)]
    with running(command, log, env) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/readyz", proc, log, timeout_s=60)
        with httpx.Client(base_url=url, timeout=30) as http:
            scored = http.post("/v1/words/score", json={"text": "Good good BAD unknown"})
            assert scored.status_code == 200, scored.text
            assert scored.json() == {
                "score": 2.0,  # 1.5 + 1.5 - 1.0: case-folded, unknown words weigh nothing
                "model": {"name": "words-local", "version": "local", "variant": "local"},
            }
            vocabulary = http.get("/v1/words/vocabulary").json()
            assert vocabulary["words"] == sorted(WEIGHTS)
            counted = http.post("/v1/words/count", json={"text": "one two three"})
            assert counted.json()["words"] == 3
            streamed = http.post("/v1/words/count", json={"text": "one two", "stream": True})
            assert streamed.headers["content-type"].startswith("text/event-stream")
            names = [(name, data.get("word")) for name, data in parse_sse(streamed.text)]
            assert names == [("word", "one"), ("word", "two"), ("result", None)]
            # shared/ did the rest: bounds, media types, docs, metrics, model info
            assert http.post("/v1/words/score", json={"text": ""}).status_code == 422
            assert http.post("/v1/words/score", content=b"x").status_code == 415
            paths = http.get("/openapi.json").json()["paths"]
            assert {"/v1/words/score", "/v1/words/vocabulary", "/v1/words/count"} <= set(paths)
            assert http.get("/v1/model").json()["vocabulary_size"] == len(WEIGHTS)
            metrics = http.get("/metrics").text
            assert 'route="/v1/words/score",service="words",stage="predict"' in metrics
