"""Locust user for similarity: embed, compare and gallery search with held-out digits."""

from __future__ import annotations

import random

from locust import FastHttpUser

from loadtests.users.common import (
    endpoint,
    service_url,
    think_time,
    user_weight,
    weighted_tasks,
)
from loadtests.users.payloads import b64, digit_pngs

SERVICE = "similarity"


class SimilarityUser(FastHttpUser):
    """A client comparing digit pairs and searching the gallery, embedding a few at a time."""

    host = service_url(SERVICE)
    wait_time = think_time()
    weight = user_weight(SERVICE)

    def on_start(self) -> None:
        self.images = [b64(png) for png in digit_pngs()]
        self.rng = random.Random(len(self.images))

    def compare(self) -> None:
        a, b = self.rng.sample(self.images, 2)
        self.client.post(
            "/v1/similarity/compare",
            json={"image_a": a, "image_b": b},
            name=endpoint(SERVICE, "POST", "/v1/similarity/compare"),
        )

    def search(self) -> None:
        self.client.post(
            "/v1/similarity/search",
            json={"image": self.rng.choice(self.images), "k": 5},
            name=endpoint(SERVICE, "POST", "/v1/similarity/search"),
        )

    def embed(self) -> None:
        self.client.post(
            "/v1/similarity/embed",
            json={"images": self.rng.sample(self.images, 4)},
            name=endpoint(SERVICE, "POST", "/v1/similarity/embed"),
        )

    tasks = weighted_tasks(
        SERVICE, {"compare": (compare, 3), "search": (search, 3), "embed": (embed, 1)}
    )
