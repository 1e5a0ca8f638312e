"""Locust user for classify: digits as a raw PNG body, as base64 JSON and as a V2 tensor."""

from __future__ import annotations

import itertools
from typing import Any

from locust import FastHttpUser

from loadtests.users.common import (
    endpoint,
    service_url,
    think_time,
    user_weight,
    weighted_tasks,
)
from loadtests.users.payloads import b64, digit_pngs

SERVICE = "classify"


class ClassifyUser(FastHttpUser):
    """A client classifying held-out digits, mostly as PNG bodies."""

    host = service_url(SERVICE)
    wait_time = think_time()
    weight = user_weight(SERVICE)

    def on_start(self) -> None:
        self.images = itertools.cycle(digit_pngs())
        self.tensors: itertools.cycle[dict[str, Any]] | None = None

    def png(self) -> None:
        self.client.post(
            "/v1/classify?top_k=3",
            data=next(self.images),
            headers={"content-type": "image/png"},
            name=endpoint(SERVICE, "POST", "/v1/classify", "png"),
        )

    def json_b64(self) -> None:
        self.client.post(
            "/v1/classify",
            json={"image": b64(next(self.images)), "top_k": 3},
            name=endpoint(SERVICE, "POST", "/v1/classify", "json"),
        )

    def v2_tensor(self) -> None:
        if self.tensors is None:
            self.tensors = itertools.cycle(self._v2_bodies())
        self.client.post(
            "/v2/models/classify/infer",
            json=next(self.tensors),
            name=endpoint(SERVICE, "POST", "/v2/models/{name}/infer"),
        )

    def _v2_bodies(self) -> list[dict[str, Any]]:
        """Preprocess the digits as the bundle says (GET /v1/model), like a tensor client."""
        from shared.media import ImageSpec, decode_image, image_to_array

        described = self.client.get("/v1/model", name=endpoint(SERVICE, "GET", "/v1/model"))
        model = described.json()
        spec = ImageSpec.from_manifest(model["preprocessing"])
        name = model["inputs"][0]["name"]
        bodies = []
        for png in digit_pngs()[:16]:
            array = image_to_array(decode_image(png, 1 << 20), spec)
            bodies.append(
                {
                    "inputs": [
                        {
                            "name": name,
                            "shape": [1, *array.shape],
                            "datatype": "FP32",
                            "data": array.ravel().tolist(),
                        }
                    ]
                }
            )
        return bodies

    tasks = weighted_tasks(SERVICE, {"png": (png, 4), "json": (json_b64, 2), "v2": (v2_tensor, 1)})
