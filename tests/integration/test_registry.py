"""register() and RegistryClient.fetch() against a real MLflow server."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from shared.errors import RegistryError
from shared.registration import register, use_tracking_server
from shared.registry import BUNDLE_SHA_TAG, RegistryClient
from tests.tinymodels import write_tiny_bundle

pytestmark = pytest.mark.integration


def test_register_then_fetch_verifies_and_caches(mlflow_server: str, tmp_path: Path) -> None:
    registry = use_tracking_server(mlflow_server)
    mlflow.set_experiment("registry-test")
    with mlflow.start_run():
        v1 = register(
            write_tiny_bundle(tmp_path / "a", name="tiny", seed=1), "tiny", alias="production"
        )
    with mlflow.start_run():
        v2 = register(write_tiny_bundle(tmp_path / "b", name="tiny", seed=2), "tiny", alias=None)
    assert int(v2) == int(v1) + 1

    fetched = registry.fetch("models:/tiny@production", tmp_path / "cache")
    assert (fetched.version, fetched.from_cache_only) == (v1, False)
    assert (tmp_path / "cache" / "tiny" / v1 / "model.onnx").is_file()
    assert registry.fetch("models:/tiny/" + v2, tmp_path / "cache").version == v2

    MlflowClient().set_registered_model_alias("tiny", "production", v2)  # roll forward
    assert registry.fetch("models:/tiny@production", tmp_path / "cache").version == v2


def test_download_that_differs_from_the_registered_manifest_is_refused(
    mlflow_server: str, tmp_path: Path
) -> None:
    registry = use_tracking_server(mlflow_server)
    mlflow.set_experiment("registry-test")
    with mlflow.start_run():
        version = register(
            write_tiny_bundle(tmp_path / "a", name="tampered"), "tampered", alias="x"
        )
    MlflowClient().set_model_version_tag("tampered", version, BUNDLE_SHA_TAG, "0" * 64)
    from shared.errors import BundleError

    with pytest.raises(BundleError, match="differs from the registry's record"):
        registry.fetch("models:/tampered@x", tmp_path / "cache")


def test_unknown_model_is_a_clear_error(mlflow_server: str, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="does not exist"):
        RegistryClient(mlflow_server).fetch("models:/no-such-model@production", tmp_path / "cache")
