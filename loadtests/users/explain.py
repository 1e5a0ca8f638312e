"""Locust user for explain: cheap attributions (saliency, Grad-CAM, few-step IG) of digits."""

from __future__ import annotations

import itertools

from locust import FastHttpUser

from loadtests.users.common import (
    endpoint,
    service_url,
    think_time,
    user_weight,
    weighted_tasks,
)
from loadtests.users.payloads import b64, digit_pngs

SERVICE = "explain"


class ExplainUser(FastHttpUser):
    """A client asking why a digit was classified so, with the interactive methods."""

    host = service_url(SERVICE)
    wait_time = think_time()
    weight = user_weight(SERVICE)

    def on_start(self) -> None:
        self.images = itertools.cycle([b64(png) for png in digit_pngs(32)])

    def _explain(self, method: str, params: dict[str, object]) -> None:
        self.client.post(
            "/v1/explain",
            json={"image": next(self.images), "method": method, "params": params},
            name=endpoint(SERVICE, "POST", "/v1/explain", method),
        )

    def saliency(self) -> None:
        self._explain("saliency", {})

    def grad_cam(self) -> None:
        self._explain("grad_cam", {})

    def integrated_gradients(self) -> None:
        self._explain("integrated_gradients", {"steps": 8})

    tasks = weighted_tasks(
        SERVICE,
        {"saliency": (saliency, 3), "grad_cam": (grad_cam, 2), "ig": (integrated_gradients, 1)},
    )
