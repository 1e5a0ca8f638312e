"""The bundle: a directory with `manifest.json`, the files it lists and their sha256 sums.

The same format carries a registered PyTorch model (`<task>-torch`, variant `torch` =
safetensors weights plus an architecture config) and a served bundle (`<task>`, ONNX variants).
Reading a bundle always verifies every listed file and refuses files it does not list; nothing
in a bundle is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import BundleError

MANIFEST = "manifest.json"
FORMAT = "modelplane-bundle/1"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def directory_sha256(directory: Path) -> str:
    """One sha256 over every file under `directory`: of the lines `<sha256>  <relative path>`
    that `sha256sum` prints, sorted by path (bytes). In a shell (docs/operations.md):
    `find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum`."""
    directory = Path(directory)
    files = sorted(
        (p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()),
        key=lambda relative: relative.encode(),
    )
    lines = "".join(f"{sha256_file(directory / relative)}  {relative}\n" for relative in files)
    return hashlib.sha256(lines.encode()).hexdigest()


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape (-1 for a dynamic axis) of one model input or output."""

    name: str
    dtype: str
    shape: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk: its directory and parsed manifest."""

    path: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def task(self) -> str:
        return str(self.manifest["task"])

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def variants(self) -> dict[str, dict[str, Any]]:
        return dict(self.manifest["variants"])

    @property
    def default_variant(self) -> str:
        return str(self.manifest["default_variant"])

    @property
    def labels(self) -> list[str]:
        return [str(x) for x in self.manifest.get("labels", [])]

    @property
    def preprocessing(self) -> dict[str, Any]:
        return dict(self.manifest.get("preprocessing", {}))

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(**spec) for spec in self.manifest.get("inputs", [])]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(**spec) for spec in self.manifest.get("outputs", [])]

    def variant_name(self, requested: str | None) -> str:
        """The variant to load: `requested`, or the manifest's default; unknown is an error."""
        name = requested or self.default_variant
        if name not in self.manifest["variants"]:
            known = ", ".join(sorted(self.manifest["variants"]))
            raise BundleError(f"variant {name!r} is not in bundle {self.name!r}; it has: {known}")
        return name

    def file(self, relative: str) -> Path:
        """Absolute path of a file the manifest lists."""
        if relative not in self.manifest["files"]:
            raise BundleError(f"{relative!r} is not listed in the manifest of {self.path}")
        return self.path / relative

    def variant_file(self, variant: str) -> Path:
        return self.file(self.manifest["variants"][variant]["file"])

    def load_array(self, relative: str) -> np.ndarray:
        """A listed `.npy` file, read without pickle."""
        return np.load(self.file(relative), allow_pickle=False)


def write_manifest(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Checksum every file under `directory` into `manifest["files"]` and write manifest.json.

    Every file present is listed, so nothing unverified can ride along in a bundle.
    """
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if relative == MANIFEST:
            continue
        files[relative] = {"sha256": sha256_file(path), "size_bytes": path.stat().st_size}
    full = {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **manifest,
        "files": files,
    }
    for name, variant in full.get("variants", {}).items():
        if variant["file"] not in files:
            raise BundleError(f"variant {name!r} names missing file {variant['file']!r}")
        variant["sha256"] = files[variant["file"]]["sha256"]
        variant["size_bytes"] = files[variant["file"]]["size_bytes"]
    (directory / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    return full


def read_manifest(directory: Path) -> dict[str, Any]:
    """Parse manifest.json without verifying files."""
    path = directory / MANIFEST
    if not path.is_file():
        raise BundleError(f"{directory} has no {MANIFEST}; it is not a modelplane bundle")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not a {FORMAT} manifest")
    for key in ("task", "name", "files", "variants", "default_variant"):
        if key not in manifest:
            raise BundleError(f"{path} lacks required field {key!r}")
    return manifest


def unlisted_files(directory: Path, manifest: dict[str, Any]) -> list[str]:
    """Files under `directory` that the manifest does not list (manifest.json aside)."""
    listed = set(manifest["files"]) | {MANIFEST}
    present = (p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    return sorted(relative for relative in present if relative not in listed)


def open_bundle(directory: Path) -> Bundle:
    """Read and verify a bundle: every listed file exists with its recorded size and sha256,
    and nothing else is there.

    An unlisted file is refused, not deleted: loaders that read a whole directory
    (tokenizers, diffusers) could pick it up unverified, and a cache directory that holds one
    was changed by something other than the download, so it is not trusted at all. (The
    registry then discards the copy and downloads it again; with the registry down, the load
    fails with this error.)"""
    directory = Path(directory)
    manifest = read_manifest(directory)
    extra = unlisted_files(directory, manifest)
    if extra:
        shown = ", ".join(repr(name) for name in extra[:5]) + (" ..." if len(extra) > 5 else "")
        raise BundleError(
            f"{directory} holds {len(extra)} file(s) its manifest does not list ({shown}); "
            "refusing to load an unverified bundle directory"
        )
    for relative, meta in manifest["files"].items():
        path = directory / relative
        if not path.resolve().is_relative_to(directory.resolve()):
            raise BundleError(f"manifest path {relative!r} escapes the bundle")
        if not path.is_file():
            raise BundleError(f"bundle file {relative!r} is missing from {directory}")
        if path.stat().st_size != meta["size_bytes"] or sha256_file(path) != meta["sha256"]:
            raise BundleError(
                f"checksum mismatch for {relative!r} in {directory}: the file was altered or "
                "truncated; refusing to load it"
            )
    return Bundle(path=directory, manifest=manifest)
