"""python -m scripts.gpu_check: the digits diffusion pipeline on a CUDA device, checked and timed.

For a session lent a GPU (the project itself targets CPUs). The same pipeline code, with the
default UNet (untrained weights: parity and speed need no training), samples on the CPU in fp32
and on CUDA in fp32, fp16 autocast and pure fp16, all from the same CPU generator; prints each
CUDA run's pixel differences against the CPU, its non-finite pixels, and seconds per 64-image
batch of 25 DPM-Solver++ steps. Writes the figures as JSON to the path given.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from models import diffusion as arch


def sample(
    pipeline: arch.DigitsDiffusionPipeline, labels: list[int], steps: int
) -> tuple[np.ndarray, float]:
    generator = torch.Generator("cpu").manual_seed(0)
    if pipeline.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    images = pipeline(labels, num_inference_steps=steps, generator=generator)
    if pipeline.device.type == "cuda":
        torch.cuda.synchronize()
    return images, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:] or ["gpu_check.json"])[0])
    torch.manual_seed(0)
    unet = arch.build_unet(arch.unet_config())
    pipeline = arch.build_pipeline(unet, "squaredcos_cap_v2", "epsilon")
    labels = [i % 10 for i in range(64)]
    figures: dict[str, object] = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    reference, figures["cpu_fp32_s"] = sample(pipeline, labels, 25)
    if not torch.cuda.is_available():
        print(json.dumps(figures), flush=True)
        out.write_text(json.dumps(figures, indent=1))
        return 1
    figures["device"] = torch.cuda.get_device_name()
    runs = (
        ("cuda_fp32", torch.float32, False),
        ("cuda_autocast_fp16", torch.float32, True),  # fp32 weights and sampler, fp16 kernels
        ("cuda_fp16", torch.float16, False),  # everything fp16, the sampler's state too
    )
    for name, dtype, mixed in runs:
        pipeline.to("cuda", dtype)
        with torch.autocast("cuda", dtype=torch.float16, enabled=mixed):
            sample(pipeline, labels, 3)  # warm-up: kernels, allocator
            images, seconds = sample(pipeline, labels, 25)
        figures[f"{name}_s"] = seconds
        figures[f"{name}_nonfinite"] = int((~np.isfinite(images.astype(np.float32))).sum())
        figures[f"{name}_max_pixel_diff"] = float(np.abs(images - reference).max())
        figures[f"{name}_mean_pixel_diff"] = float(np.abs(images - reference).mean())
    print(json.dumps(figures, indent=1), flush=True)
    out.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
