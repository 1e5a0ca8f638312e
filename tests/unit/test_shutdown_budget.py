"""Kubernetes waits long enough for a pod to shut down the way shared/serve.py does: the
preStop sleep, the wait for the accept queue, then uvicorn's graceful timeout (which bounds
in-flight requests and idle keep-alive connections), with room for the lifespan's end."""

from __future__ import annotations

from scripts import k8s
from services.catalog import SERVICES
from shared import serve


def test_termination_grace_covers_the_shutdown_sequence() -> None:
    for svc in SERVICES:
        pod = k8s.deployment(svc)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        needed = float(command[1]) + serve.ACCEPT_QUEUE_WAIT_S + serve.GRACEFUL_TIMEOUT_S
        # the SIGKILL comes at terminationGracePeriodSeconds, counted from preStop's start
        assert pod["terminationGracePeriodSeconds"] >= needed + 5, svc.name
        assert serve.KEEP_ALIVE_S < serve.GRACEFUL_TIMEOUT_S  # idle connections close first
