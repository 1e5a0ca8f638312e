"""A bundle directory holds exactly what its manifest lists; a local pipeline is hashed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from shared.bundle import directory_sha256, open_bundle, sha256_file
from shared.errors import BundleError
from shared.registry import RegistryClient
from tests.tinymodels import seed_cache, write_tiny_bundle
from tests.unit.conftest import DEAD_REGISTRY


@pytest.mark.parametrize("extra", ["notes.txt", "tokenizer/extra.json"])
def test_an_unlisted_file_is_refused(tmp_path: Path, extra: str) -> None:
    directory = write_tiny_bundle(tmp_path / "b")
    (directory / extra).parent.mkdir(parents=True, exist_ok=True)
    (directory / extra).write_text("{}")
    with pytest.raises(BundleError, match=rf"does not list \('{extra}'\); refusing"):
        open_bundle(directory)


def test_a_cached_bundle_with_an_unlisted_file_is_not_served(tmp_path: Path) -> None:
    bundle_dir = seed_cache(tmp_path)
    (bundle_dir / "model.extra.onnx").write_bytes(b"not listed")
    with pytest.raises(BundleError, match=r"1 file\(s\) its manifest does not list"):
        RegistryClient(DEAD_REGISTRY, timeout_s=2).fetch("models:/classify@production", tmp_path)


def test_directory_hash_is_sha256sum_of_sorted_files_and_sees_any_change(tmp_path: Path) -> None:
    directory = write_tiny_bundle(tmp_path / "b")
    files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))
    listing = "".join(f"{sha256_file(directory / f)}  {f}\n" for f in files)
    before = directory_sha256(directory)
    assert before == hashlib.sha256(listing.encode()).hexdigest()
    (directory / "sub").mkdir()
    (directory / "sub" / "new.txt").write_text("x")
    assert directory_sha256(directory) != before
