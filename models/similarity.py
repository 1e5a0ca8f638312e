"""The Siamese encoder: one shared-weight net mapping a digit image to an L2-normalized embedding.

A "twin" network needs no second copy of the weights: both images of a pair (and every image of
a mined triplet) go through this one module. The normalization is part of `forward`, so the ONNX
graph outputs unit vectors and a dot product is the cosine similarity everywhere (training,
export, serving). `build_encoder(architecture)` rebuilds the net from the JSON-able dict stored
in the bundle manifest plus safetensors weights; nothing is ever unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from models import classify as backbones
from shared.bundle import Bundle, write_manifest
from shared.media import ImageSpec

ARCHITECTURES = ("cnn", "resnet18")
TASK = "similarity"
TORCH_VARIANT = "torch"
WEIGHTS_FILE = "weights.safetensors"
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
_CNN_DEFAULTS: dict[str, Any] = {"widths": [32, 64, 128], "in_channels": 1}


def architecture_config(
    name: str = "cnn", embedding_dim: int = 64, **overrides: Any
) -> dict[str, Any]:
    """The dict `build_encoder` needs: `name`, `embedding_dim` and the trunk's settings.

    `cnn` is a small VGG-style net (two 3x3 convs per stage, max-pooling between stages, global
    average pooling); `resnet18` reuses the classify job's torchvision ResNet-18 (small-image
    stem) with its head sized to the embedding.
    """
    if embedding_dim < 2:
        raise ValueError(f"embedding_dim must be at least 2, got {embedding_dim}")
    if name == "cnn":
        unknown = set(overrides) - set(_CNN_DEFAULTS)
        if unknown:
            raise ValueError(
                f"cnn has no setting(s) {sorted(unknown)}; known: {sorted(_CNN_DEFAULTS)}"
            )
        config = {**_CNN_DEFAULTS, **overrides}
        config["widths"] = [int(w) for w in config["widths"]]
        return {"name": name, "embedding_dim": int(embedding_dim), **config}
    if name == "resnet18":
        trunk = backbones.architecture_config("resnet18", embedding_dim, **overrides)
        return {"name": name, "embedding_dim": int(embedding_dim), "trunk": trunk}
    raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ARCHITECTURES)}")


def input_channels(architecture: dict[str, Any]) -> int:
    """How many input channels the encoder expects (the ImageSpec must match)."""
    if architecture["name"] == "resnet18":
        return int(architecture["trunk"]["in_channels"])
    return int(architecture["in_channels"])


def _stage(in_channels: int, out_channels: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for c_in in (in_channels, out_channels):
        layers += [
            nn.Conv2d(c_in, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    return layers


def small_cnn(in_channels: int, widths: list[int], embedding_dim: int) -> nn.Module:
    """Conv stages (halving the resolution between them), global average pool, linear head."""
    layers: list[nn.Module] = []
    previous = in_channels
    for i, width in enumerate(widths):
        if i:
            layers.append(nn.MaxPool2d(2))
        layers += _stage(previous, width)
        previous = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(previous, embedding_dim)]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """A trunk producing raw embeddings, followed by L2 normalization (unit-length output)."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.trunk(x), p=2.0, dim=1, eps=1e-12)


def build_encoder(architecture: dict[str, Any]) -> Encoder:
    """A freshly initialized encoder from its architecture dict (as stored in the manifest)."""
    name = architecture.get("name")
    dim = int(architecture.get("embedding_dim", 0))
    if name == "cnn":
        return Encoder(
            small_cnn(int(architecture["in_channels"]), list(architecture["widths"]), dim)
        )
    if name == "resnet18":
        trunk = dict(architecture["trunk"])
        if int(trunk["num_classes"]) != dim:
            raise ValueError(f"resnet18 trunk outputs {trunk['num_classes']}, not {dim}")
        return Encoder(backbones.build_model(trunk))
    raise ValueError(f"architecture {architecture!r} needs 'name' in {ARCHITECTURES}")


def io_specs(spec: ImageSpec, embedding_dim: int) -> tuple[list[dict], list[dict]]:
    """Manifest input/output tensor specs of an encoder (dynamic batch axis)."""
    return (
        [
            {
                "name": INPUT_NAME,
                "dtype": "float32",
                "shape": [-1, spec.channels, spec.height, spec.width],
            }
        ],
        [{"name": OUTPUT_NAME, "dtype": "float32", "shape": [-1, embedding_dim]}],
    )


def write_torch_bundle(
    directory: Path,
    model: Encoder,
    *,
    name: str,
    architecture: dict[str, Any],
    spec: ImageSpec,
    labels: list[str],
    threshold: float,
    training: dict[str, str],
    source: dict[str, str],
    metrics: dict[str, float],
) -> dict[str, Any]:
    """Write a `similarity-torch` bundle: safetensors weights and the manifest that rebuilds it.

    `threshold` is the cosine similarity above which two images count as the same identity,
    chosen on validation pairs; `training` records the loss and miner used.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    inputs, outputs = io_specs(spec, int(architecture["embedding_dim"]))
    return write_manifest(
        directory,
        {
            "task": TASK,
            "name": name,
            "default_variant": TORCH_VARIANT,
            "variants": {TORCH_VARIANT: {"file": WEIGHTS_FILE, "format": "safetensors"}},
            "architecture": architecture,
            "torch_weights": WEIGHTS_FILE,
            "preprocessing": spec.to_manifest(),
            "labels": list(labels),
            "inputs": inputs,
            "outputs": outputs,
            "threshold": float(threshold),
            "training": training,
            "source": source,
            "metrics": metrics,
        },
    )


def load_torch_bundle(bundle: Bundle) -> Encoder:
    """Rebuild the encoder from a similarity bundle's architecture and safetensors; eval mode."""
    manifest = bundle.manifest
    if manifest.get("task") != TASK or not {"architecture", "torch_weights"} <= set(manifest):
        raise ValueError(f"{bundle.name} is not a similarity bundle with torch weights")
    model = build_encoder(manifest["architecture"])
    model.load_state_dict(load_file(str(bundle.file(manifest["torch_weights"]))))
    return model.eval()
