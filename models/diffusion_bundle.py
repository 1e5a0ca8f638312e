"""The digits pipeline as a bundle: smoke-test arrays, manifest, and the ONNX UNet stand-in.

`write_pipeline_bundle` is the registered `generate-torch` layout (the pipeline directory from
`save_pretrained` plus a checksummed manifest); `onnx_unet_fn` lets the pipeline run an
exported ONNX UNet through onnxruntime instead of the torch UNet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import UNet2DModel

from models.diffusion import DigitsDiffusionPipeline, UNetFn
from shared.bundle import write_manifest
from shared.onnx import session_options

SMOKE_INPUTS = "sample_inputs.npy"
SMOKE_OUTPUTS = "expected_outputs.npy"
SMOKE_TIMESTEP = 500
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def smoke_arrays(unet: UNet2DModel, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed noise for every class and the UNet's output on it at `SMOKE_TIMESTEP`."""
    classes = int(unet.config.num_class_embeds)
    size, channels = int(unet.config.sample_size), int(unet.config.in_channels)
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn((classes, channels, size, size), generator=generator)
    with torch.no_grad():
        output = unet.eval()(sample, SMOKE_TIMESTEP, class_labels=torch.arange(classes)).sample
    return sample.numpy(), output.numpy()


def write_pipeline_bundle(
    directory: Path,
    pipeline: DigitsDiffusionPipeline,
    *,
    name: str,
    generation: dict[str, Any],
    source: dict[str, str],
    metrics: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """save_pretrained (safetensors) + smoke arrays + a checksummed manifest in `directory`."""
    pipeline.save_pretrained(directory, safe_serialization=True)
    sample, expected = smoke_arrays(pipeline.unet)
    np.save(directory / SMOKE_INPUTS, sample)
    np.save(directory / SMOKE_OUTPUTS, expected)
    size = pipeline.image_size
    return write_manifest(
        directory,
        {
            "task": "generate",
            "name": name,
            "default_variant": "torch",
            "variants": {"torch": {"file": WEIGHTS, "format": "diffusers-safetensors"}},
            "pipeline": {
                "class": type(pipeline).__name__,
                "kind": "class-conditional",
                "null_class": pipeline.num_classes,
                "smoke_timestep": SMOKE_TIMESTEP,
                "expected_outputs": SMOKE_OUTPUTS,
            },
            "generation": generation,
            "sample_inputs": SMOKE_INPUTS,
            "preprocessing": {"size": [size, size], "channels": 1, "mean": [0.5], "std": [0.5]},
            "labels": [str(i) for i in range(pipeline.num_classes)],
            "source": source,
            "metrics": metrics,
            **(extra or {}),
        },
    )


def onnx_unet_fn(path: Path, threads: int) -> UNetFn:
    """An onnxruntime session as a UNet stand-in for DigitsDiffusionPipeline(unet_fn=...)."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(path), session_options(threads), providers=["CPUExecutionProvider"]
    )

    def run(sample: torch.Tensor, timestep: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        count = sample.shape[0]
        feeds = {
            "sample": sample.detach().numpy().astype(np.float32, copy=False),
            "timestep": np.full((count,), float(timestep), dtype=np.float32),
            "class_labels": labels.numpy().astype(np.int64, copy=False),
        }
        return torch.from_numpy(session.run(None, feeds)[0])

    return run
