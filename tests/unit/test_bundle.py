"""Bundle manifests, checksums and the verified cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.bundle import open_bundle, write_manifest
from shared.errors import BundleError, RegistryError
from shared.onnx import OnnxModel
from shared.registry import ModelURI, RegistryClient
from tests.tinymodels import seed_cache, write_tiny_bundle
from tests.unit.conftest import DEAD_REGISTRY


def flip_byte(path: Path, offset: int = -10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_manifest_lists_every_file_with_its_checksum(tmp_path: Path) -> None:
    bundle = open_bundle(write_tiny_bundle(tmp_path / "b"))
    assert set(bundle.manifest["files"]) == {
        "model.onnx",
        "sample_inputs.npy",
        "expected_outputs.fp32.npy",
    }
    assert bundle.variants["fp32"]["sha256"] == bundle.manifest["files"]["model.onnx"]["sha256"]
    assert bundle.variant_name(None) == "fp32"


def test_one_flipped_byte_is_refused(tmp_path: Path) -> None:
    directory = write_tiny_bundle(tmp_path / "b")
    flip_byte(directory / "model.onnx")
    with pytest.raises(BundleError, match=r"checksum mismatch for 'model\.onnx'"):
        open_bundle(directory)


def test_missing_file_and_bad_manifest_are_refused(tmp_path: Path) -> None:
    directory = write_tiny_bundle(tmp_path / "b")
    (directory / "sample_inputs.npy").unlink()
    with pytest.raises(BundleError, match="missing"):
        open_bundle(directory)
    (directory / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        open_bundle(directory)


def test_manifest_paths_cannot_escape_the_bundle(tmp_path: Path) -> None:
    directory = write_tiny_bundle(tmp_path / "b")
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["../outside"] = {"sha256": "0", "size_bytes": 1}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="escapes"):
        open_bundle(directory)


def test_variant_must_name_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(BundleError, match="missing file"):
        write_manifest(
            tmp_path / "x",
            {
                "task": "t",
                "name": "n",
                "default_variant": "fp32",
                "variants": {"fp32": {"file": "model.onnx"}},
            },
        )


def test_unknown_variant_names_the_ones_that_exist(tmp_path: Path) -> None:
    bundle = open_bundle(write_tiny_bundle(tmp_path / "b"))
    with pytest.raises(BundleError, match="it has: fp32"):
        bundle.variant_name("int8-static")


def test_smoke_test_catches_a_different_model(tmp_path: Path) -> None:
    good = open_bundle(write_tiny_bundle(tmp_path / "good", seed=0))
    other = open_bundle(write_tiny_bundle(tmp_path / "other", seed=5))
    model = OnnxModel.from_bundle(other, "fp32", intra_op_threads=1)
    assert model.smoke_test(other, "fp32") < 1e-5
    with pytest.raises(BundleError, match="smoke test failed"):
        model.smoke_test(good, "fp32")


def test_onnx_input_checks_dtype_and_shape(tmp_path: Path) -> None:
    bundle = open_bundle(write_tiny_bundle(tmp_path / "b"))
    model = OnnxModel.from_bundle(bundle, "fp32", intra_op_threads=1)
    from shared.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="float32"):
        model.run({"input": np.zeros((1, 3, 8, 8), dtype=np.float64)})
    with pytest.raises(InvalidInputError, match="shape"):
        model.run({"input": np.zeros((1, 3, 9, 8), dtype=np.float32)})
    assert model.run({"input": np.zeros((5, 3, 8, 8), dtype=np.float32)})[0].shape == (5, 10)


def test_model_uri_parsing() -> None:
    assert ModelURI.parse("models:/classify@production") == ModelURI("classify", "production", None)
    assert ModelURI.parse("models:/classify/3") == ModelURI("classify", None, "3")
    with pytest.raises(RegistryError, match="not of the form"):
        ModelURI.parse("s3://bucket/model")


def test_unreachable_registry_serves_the_verified_cache(tmp_path: Path) -> None:
    seed_cache(tmp_path)
    fetched = RegistryClient(DEAD_REGISTRY, timeout_s=2).fetch(
        "models:/classify@production", tmp_path
    )
    assert (fetched.version, fetched.from_cache_only) == ("1", True)


def test_unreachable_registry_and_corrupt_cache_refuses(tmp_path: Path) -> None:
    bundle_dir = seed_cache(tmp_path)
    flip_byte(bundle_dir / "model.onnx")
    with pytest.raises(BundleError, match="checksum mismatch"):
        RegistryClient(DEAD_REGISTRY, timeout_s=2).fetch("models:/classify@production", tmp_path)


def test_unreachable_registry_and_empty_cache_says_why(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"unreachable .* no cached copy"):
        RegistryClient(DEAD_REGISTRY, timeout_s=2).fetch("models:/classify@production", tmp_path)
