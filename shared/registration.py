"""Publishing to the registry from a job that uses mlflow in-process (training, export, tests):
point mlflow at a server, and register a verified bundle as a new model version."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from shared.bundle import MANIFEST, open_bundle, sha256_file
from shared.errors import RegistryError
from shared.registry import BUNDLE_SHA_TAG, RegistryClient

log = logging.getLogger("modelplane.registry")


def use_tracking_server(
    tracking_uri: str, *, timeout_s: float = 5.0, max_retries: int = 1
) -> RegistryClient:
    """Point this process's mlflow (runs, `register`) at `tracking_uri` and return a client of
    its registry: for training jobs and tests, which use mlflow in-process."""
    import mlflow

    # mlflow's HTTP client reads its timeout and retries only from the environment, so a job
    # that uses mlflow in-process must set them here to fail in seconds, not minutes, when the
    # server is down; serving never calls this (its download child gets them through env=)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, int(timeout_s)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = "1"
    mlflow.set_tracking_uri(tracking_uri)  # the registry follows it (no registry URI is set,
    # so a later MlflowClient(tracking_uri=other) talks to `other`'s registry, not this one)
    return RegistryClient.from_environment(
        tracking_uri, timeout_s=timeout_s, max_retries=max_retries
    )


def register(
    local_dir: Path,
    model_name: str,
    *,
    alias: str | None,
    tags: dict[str, str] | None = None,
    artifact_path: str = "bundle",
) -> str:
    """Log `local_dir` (a bundle) to the active MLflow run and register it as a new version.

    Returns the new version. The manifest's sha256 is stored as a version tag so a download
    can be checked against what was registered.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    run = mlflow.active_run()
    if run is None:
        raise RegistryError("register() needs an active MLflow run")
    open_bundle(local_dir)  # never register a bundle that does not verify
    mlflow.log_artifacts(str(local_dir), artifact_path)
    client = MlflowClient()  # the active run's server, as mlflow is configured
    try:
        client.create_registered_model(model_name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    all_tags = {**(tags or {}), BUNDLE_SHA_TAG: sha256_file(Path(local_dir) / MANIFEST)}
    mv = client.create_model_version(
        model_name,
        source=f"{run.info.artifact_uri}/{artifact_path}",
        run_id=run.info.run_id,
        tags=all_tags,
    )
    if alias:
        client.set_registered_model_alias(model_name, alias, mv.version)
    log.info("registered %s version %s%s", model_name, mv.version, f" @{alias}" if alias else "")
    return str(mv.version)
