"""Kubernetes waits long enough for a pod to shut down the way shared/serve.py does: the
preStop sleep, the wait for the accept queue, then uvicorn's graceful timeout (which bounds
in-flight requests and idle keep-alive connections), with room for the lifespan's end. gRPC's
grace runs beside uvicorn's (shared/serve.py starts both), not after it."""

from __future__ import annotations

from scripts import k8s
from services.catalog import SERVICES
from shared import grpcserver, serve


def test_termination_grace_covers_the_shutdown_sequence() -> None:
    for svc in SERVICES:
        pod = k8s.deployment(svc)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        graceful = max(serve.GRACEFUL_TIMEOUT_S, grpcserver.GRACE_S)
        needed = float(command[1]) + serve.ACCEPT_QUEUE_WAIT_S + graceful
        # the SIGKILL comes at terminationGracePeriodSeconds, counted from preStop's start
        assert pod["terminationGracePeriodSeconds"] >= needed + 5, svc.name
        assert serve.KEEP_ALIVE_S < serve.GRACEFUL_TIMEOUT_S  # idle connections close first
