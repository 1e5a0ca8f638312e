"""Locust user for text: language identification in twelve languages, code summaries."""

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
from loadtests.users.payloads import accepted_snippets, sentences

SERVICE = "text"


class TextUser(FastHttpUser):
    """A client labelling short texts in batches and asking for short greedy summaries."""

    host = service_url(SERVICE)
    wait_time = think_time()
    weight = user_weight(SERVICE)

    def on_start(self) -> None:
        self.texts = list(sentences())
        self.code = list(accepted_snippets(self.host))
        self.rng = random.Random(len(self.texts))

    def classify(self) -> None:
        self.client.post(
            "/v1/text/classify",
            json={"texts": self.rng.sample(self.texts, 4), "top_k": 3},
            name=endpoint(SERVICE, "POST", "/v1/text/classify"),
        )

    def summarize(self) -> None:
        self.client.post(
            "/v1/text/generate",
            json={"text": self.rng.choice(self.code), "max_new_tokens": 16},
            name=endpoint(SERVICE, "POST", "/v1/text/generate"),
        )

    tasks = weighted_tasks(SERVICE, {"classify": (classify, 4), "summarize": (summarize, 1)})
