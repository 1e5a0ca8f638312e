"""`GENERATE_PIPELINE_DIR=<dir> python -m services.generate`: a real process serving a local
diffusers directory (no registry at all), answering a real text-to-image request."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
from PIL import Image

from tests.tinydiffusion import tiny_stable_diffusion
from tests.tinyserve import serve_cached


def test_generate_serves_a_local_pipeline_directory(tmp_path: Path) -> None:
    pipeline_dir = tiny_stable_diffusion(tmp_path / "pipeline")
    # the registry is never asked (the directory is the model); INFO logs would show it
    env = {"GENERATE_PIPELINE_DIR": str(pipeline_dir), "LOG_LEVEL": "INFO"}
    log = tmp_path / "generate.log"
    with serve_cached("generate", tmp_path / "unused-cache", log, env) as served:
        url = served.url
        request = {"prompt": "a red cat", "width": 32, "height": 24, "steps": 2, "seed": 3}
        answer = httpx.post(f"{url}/v1/generate", json=request, timeout=120)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"]["name"] == "generate-local"
        image = Image.open(io.BytesIO(base64.b64decode(body["images"][0]["image"])))
        assert (image.format, image.size) == ("PNG", (32, 24))
        bad = httpx.post(f"{url}/v1/generate", json={**request, "width": 30}, timeout=30)
        assert bad.status_code == 422 and "multiples of 8" in bad.json()["detail"]
    assert "registered-models" not in (tmp_path / "generate.log").read_text()
