"""Locust user for generate: one digit image per request with a small step count."""

from __future__ import annotations

import itertools

from locust import FastHttpUser

from loadtests.users.common import endpoint, service_url, think_time, user_weight, weighted_tasks

SERVICE = "generate"
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


class GenerateUser(FastHttpUser):
    """A client generating digits from prompts; few denoising steps keep a request short."""

    host = service_url(SERVICE)
    wait_time = think_time()
    weight = user_weight(SERVICE)

    def on_start(self) -> None:
        self.seeds = itertools.count()

    def prompt(self) -> None:
        seed = next(self.seeds)
        self.client.post(
            "/v1/generate",
            json={"prompt": f"a handwritten {WORDS[seed % 10]}", "steps": 4, "seed": seed},
            name=endpoint(SERVICE, "POST", "/v1/generate", "prompt"),
        )

    def schedulers(self) -> None:
        self.client.get(
            "/v1/generate/schedulers", name=endpoint(SERVICE, "GET", "/v1/generate/schedulers")
        )

    tasks = weighted_tasks(SERVICE, {"prompt": (prompt, 10), "schedulers": (schedulers, 1)})
