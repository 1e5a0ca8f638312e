"""Diffusion safety: the Stable Diffusion safety checker through the real loading path, the
prompt filter, and the classifier-free guidance arithmetic (negative class included)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from services.generate.safety import PromptBlockedError, PromptFilter
from services.generate.service import GenerateService, GenerateSettings
from shared.app import create_app
from shared.settings import ServingSettings
from tests.tinydiffusion import seed_cache, tiny_digits_pipeline, tiny_stable_diffusion
from tests.unit.conftest import DEAD_REGISTRY, wait_ready

SD_REQUEST = {"prompt": "a photo of a red cat", "width": 16, "height": 16, "steps": 2, "seed": 4}


@contextmanager
def serving(cache: Path, pipeline_dir: Path | None = None, **extra: Any) -> Iterator[TestClient]:
    base = ServingSettings(
        mlflow_tracking_uri=DEAD_REGISTRY,
        model_cache_dir=cache,
        onnx_intra_op_threads=1,
        log_json=False,
    )
    settings = GenerateSettings(
        **base.model_dump(exclude_unset=True), generate_pipeline_dir=pipeline_dir, **extra
    )
    with TestClient(create_app(GenerateService, settings)) as client:
        wait_ready(client, timeout_s=60)
        yield client


def pixels(item: dict[str, Any]) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(item["image"]))))


@pytest.mark.parametrize("verdict", ["flag-all", "flag-none"])
def test_the_pipelines_safety_checker_decides_what_is_withheld(
    tmp_path: Path, verdict: str
) -> None:
    pipeline_dir = tiny_stable_diffusion(tmp_path / "sd", safety=verdict)
    assert (pipeline_dir / "safety_checker" / "model.safetensors").is_file()  # no pickle
    with serving(tmp_path / "cache", pipeline_dir) as client:
        assert client.get("/v1/model").json()["safety_checker"] == (
            "stable-diffusion-safety-checker"
        )
        body = client.post("/v1/generate", json={**SD_REQUEST, "num_images": 2}).json()
    assert body["safety"] == {"checker": "stable-diffusion-safety-checker", "ran": True}
    flagged = verdict == "flag-all"
    for item in body["images"]:
        assert item["flagged"] is flagged
        image = pixels(item)
        assert image.shape == (16, 16, 3)
        assert bool(image.any()) is not flagged  # withheld images are black, others are not


def test_blocked_prompts_are_422_before_queueing_and_others_pass(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    seed_cache(cache)
    with serving(cache, generate_blocked_terms="gore, Graphic  Violence") as client:
        assert client.get("/v1/model").json()["prompt_filter"] == {"blocked_terms": 2}
        for prompt in ("a handwritten 7 with GORE", "seven, graphic\tviolence"):
            response = client.post("/v1/generate", json={"prompt": prompt, "steps": 1})
            assert response.status_code == 422, response.text
            assert response.headers["content-type"] == "application/problem+json"
            problem = response.json()
            assert problem["code"] == "prompt_blocked"
            assert "blocked term" in problem["detail"]
            assert "GENERATE_BLOCKED_TERMS" in problem["detail"]
        allowed = client.post("/v1/generate", json={"prompt": "a gorey 7", "steps": 1})
        assert allowed.status_code == 200, allowed.text  # whole words only


def test_prompt_filter_matches_whole_words_in_any_case_and_spacing() -> None:
    check = PromptFilter.parse(" gore ,, red cat").check
    for prompt in ("Gore", "a RED   cat", "red cat!", "(gore)"):
        with pytest.raises(PromptBlockedError):
            check(prompt)
    for prompt in ("gorey", "a red catalogue", "redcat", "", None):
        check(prompt)
    PromptFilter.parse("").check("anything at all")  # empty setting: no filter


@pytest.fixture(scope="module")
def digits() -> Any:
    torch.set_num_threads(1)
    return tiny_digits_pipeline(seed=3)


def unet(pipeline: Any, x: torch.Tensor, t: torch.Tensor, labels: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return pipeline.unet(x, t, class_labels=torch.tensor(labels)).sample


def test_guidance_scale_0_is_unconditional_1_conditional_and_w_extrapolates(digits: Any) -> None:
    x = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    t = torch.tensor(400)
    labels, null = torch.tensor([3, 7]), torch.tensor([digits.num_classes] * 2)
    cond, uncond = unet(digits, x, t, [3, 7]), unet(digits, x, t, [10, 10])
    assert not torch.allclose(cond, uncond)  # the class matters to this UNet

    def guided(w: float, negative: torch.Tensor = null) -> torch.Tensor:
        with torch.no_grad():
            return digits.guided_output(x, t, labels, negative, w)

    torch.testing.assert_close(guided(0.0), uncond)
    torch.testing.assert_close(guided(1.0), cond)
    torch.testing.assert_close(guided(2.5), uncond + 2.5 * (cond - uncond), atol=1e-5, rtol=1e-4)
    # the negative class replaces the null class: w = 0 is then the negative's prediction
    negative = torch.tensor([5, 5])
    torch.testing.assert_close(guided(0.0, negative), unet(digits, x, t, [5, 5]))
    away = unet(digits, x, t, [5, 5])
    torch.testing.assert_close(
        guided(3.0, negative), away + 3.0 * (cond - away), atol=1e-5, rtol=1e-4
    )


def test_a_negative_class_steers_the_whole_sampling_loop(digits: Any) -> None:
    def sample(labels: list[int], w: float, negative: list[int] | None = None) -> np.ndarray:
        return digits(
            labels,
            guidance_scale=w,
            num_inference_steps=4,
            generator=[torch.Generator().manual_seed(9)],
            negative_class_labels=negative,
        )

    # at w = 0 only the negative branch speaks: "not a 3" at w = 0 draws the 3 itself
    np.testing.assert_array_equal(sample([5], 0.0, negative=[3]), sample([3], 1.0))
    assert not np.array_equal(sample([5], 2.0, negative=[3]), sample([5], 2.0))
