"""Export the digits diffusion model: generate-torch@candidate → the `generate` bundle.

The bundle is the pipeline directory (save_pretrained, safetensors) plus a manifest with
checksums. The UNet is also exported to ONNX; that variant is kept (and made the default) only
when it matches the PyTorch UNet on the smoke inputs and generates faster on this CPU, measured
here as seconds per image at 25 DPM-Solver++ steps. `production` moves only when the gates pass.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.diffusion import DigitsDiffusionPipeline, UNetFn, make_scheduler
from models.diffusion_bundle import (
    SMOKE_INPUTS,
    SMOKE_OUTPUTS,
    SMOKE_TIMESTEP,
    WEIGHTS,
    onnx_unet_fn,
)
from shared.bundle import MANIFEST, Bundle, write_manifest
from shared.registration import register, use_tracking_server
from shared.settings import available_cores

ONNX_FILE = "unet.onnx"
PARITY_ATOL = 1e-3
TIMING_IMAGES = 4


def say(message: str) -> None:
    print(f"[export generate] {message}", flush=True)


class _UNetGraph(torch.nn.Module):
    """The UNet with plain tensor inputs and output, as ONNX wants it."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, labels: torch.Tensor) -> Any:
        return self.unet(sample, timestep, class_labels=labels).sample


def export_unet_onnx(pipeline: DigitsDiffusionPipeline, path: Path, opset: int = 18) -> None:
    """UNet → ONNX: inputs sample (N,1,S,S) f32, timestep (N,) f32, class_labels (N,) i64."""
    size = pipeline.image_size
    batch = torch.export.Dim("batch", min=1, max=1024)
    example = (torch.zeros(2, 1, size, size), torch.full((2,), 500.0), torch.arange(2))
    torch.onnx.export(
        _UNetGraph(pipeline.unet).eval(),
        example,
        str(path),
        input_names=["sample", "timestep", "class_labels"],
        output_names=["prediction"],
        dynamic_shapes=({0: batch}, {0: batch}, {0: batch}),
        opset_version=opset,
        dynamo=True,
        external_data=False,
        verbose=False,
    )


def seconds_per_image(
    pipeline: DigitsDiffusionPipeline, guidance: float, unet_fn: UNetFn | None, runs: int
) -> tuple[float, np.ndarray]:
    """Median over `runs` runs of one 4-image generation (25 DPM-Solver++ steps), per image."""
    times, images = [], np.zeros(0)
    for _ in range(runs):
        generators = [torch.Generator().manual_seed(i) for i in range(TIMING_IMAGES)]
        started = time.perf_counter()
        images = pipeline(
            list(range(TIMING_IMAGES)),
            guidance_scale=guidance,
            num_inference_steps=25,
            generator=generators,
            scheduler=make_scheduler("dpmsolver++", pipeline.scheduler.config, pixel_space=True),
            unet_fn=unet_fn,
        )
        times.append((time.perf_counter() - started) / TIMING_IMAGES)
    return float(np.median(times)), images


@dataclass(frozen=True)
class Options:
    """How to export: try ONNX, keep it even when slower, threads, timed generations."""

    onnx: bool = True
    keep_onnx: bool = False
    threads: int = 0
    timing_runs: int = 3


def build_bundle(source: Bundle, out: Path, name: str, options: Options) -> dict[str, Any]:
    """Copy the pipeline, check it, optionally add the ONNX UNet; write the manifest."""
    for path in source.path.rglob("*"):
        if path.is_file() and path.name != MANIFEST:
            target = out / path.relative_to(source.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    pipeline = DigitsDiffusionPipeline.from_pretrained(
        out, use_safetensors=True, local_files_only=True
    )
    pipeline.set_progress_bar_config(disable=True)
    sample = np.load(out / SMOKE_INPUTS, allow_pickle=False)
    expected = np.load(out / SMOKE_OUTPUTS, allow_pickle=False)
    labels = torch.arange(len(sample))
    with torch.no_grad():
        got = pipeline.unet.eval()(torch.from_numpy(sample), SMOKE_TIMESTEP, class_labels=labels)
    figures: dict[str, Any] = {
        "torch_smoke_diff": float(np.abs(got.sample.numpy() - expected).max())
    }
    guidance = float(source.manifest.get("generation", {}).get("guidance_scale", 2.0))
    runs, threads = options.timing_runs, options.threads or available_cores()
    figures["torch_seconds_per_image"], reference = seconds_per_image(
        pipeline, guidance, None, runs
    )
    say(
        f"torch: smoke diff {figures['torch_smoke_diff']:.1e}, "
        f"{figures['torch_seconds_per_image']:.3f} s/image at 25 steps"
    )
    variants: dict[str, Any] = {"torch": {"file": WEIGHTS, "format": "diffusers-safetensors"}}
    default = "torch"
    if options.onnx:
        started = time.perf_counter()
        export_unet_onnx(pipeline, out / ONNX_FILE)
        fn = onnx_unet_fn(out / ONNX_FILE, threads)
        onnx_out = fn(torch.from_numpy(sample), torch.tensor(SMOKE_TIMESTEP), labels).numpy()
        figures["onnx_smoke_diff"] = float(np.abs(onnx_out - expected).max())
        figures["onnx_seconds_per_image"], images = seconds_per_image(pipeline, guidance, fn, runs)
        figures["onnx_max_pixel_diff"] = float(np.abs(images - reference).max() * 255)
        faster = figures["onnx_seconds_per_image"] < figures["torch_seconds_per_image"]
        parity = figures["onnx_smoke_diff"] <= PARITY_ATOL
        keep = parity and (faster or options.keep_onnx)
        verdict = "the default variant" if keep and faster else "kept" if keep else "dropped"
        say(
            f"onnx: exported in {time.perf_counter() - started:.0f}s, smoke diff "
            f"{figures['onnx_smoke_diff']:.1e}, {figures['onnx_seconds_per_image']:.3f} s/image, "
            f"max pixel diff vs torch {figures['onnx_max_pixel_diff']:.2f}/255, "
            f"{'faster' if faster else 'not faster'}: {verdict}"
        )
        if keep:
            variants["onnx"] = {
                "file": ONNX_FILE,
                "format": "onnx",
                "inputs": ["sample", "timestep", "class_labels"],
            }
            default = "onnx" if faster else "torch"
        else:
            (out / ONNX_FILE).unlink()
    for variant in variants:
        variants[variant]["seconds_per_image"] = figures[f"{variant}_seconds_per_image"]
    manifest = {k: v for k, v in source.manifest.items() if k not in ("files", "created", "format")}
    write_manifest(
        out, {**manifest, "name": name, "default_variant": default, "variants": variants}
    )
    figures["gates_pass"] = figures["torch_smoke_diff"] <= PARITY_ATOL
    return figures


def export_generate(
    *,
    tracking_uri: str,
    source: str = "models:/generate-torch@candidate",
    name: str = "generate",
    alias: str = "production",
    cache_dir: Path = Path(".modelplane/export-cache"),
    options: Options | None = None,
) -> int:
    """Fetch `source`, build and register the bundle `name`; move `alias` when gates pass."""
    import mlflow

    options = options or Options()
    torch.set_num_threads(options.threads or available_cores())
    registry = use_tracking_server(tracking_uri, timeout_s=30, max_retries=3)
    say(f"fetching {source} from {tracking_uri}")
    fetched = registry.fetch(source, cache_dir)
    mlflow.set_experiment("export-generate")
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name=f"export {name}") as run:
        out = Path(tmp) / "bundle"
        out.mkdir()
        manifest_source = {
            "model": fetched.name,
            "version": fetched.version,
            "run_id": fetched.run_id,
        }
        fetched.bundle.manifest["source"] = {
            **fetched.bundle.manifest.get("source", {}),
            **manifest_source,
        }
        figures = build_bundle(fetched.bundle, out, name, options)
        holds = bool(figures.pop("gates_pass"))
        mlflow.log_params({"task": "generate", "source": source, "source_version": fetched.version})
        mlflow.log_metrics({k: float(v) for k, v in figures.items()})
        version = register(
            out,
            name,
            alias=alias if holds else None,
            tags={
                "source_model": fetched.name,
                "source_version": fetched.version,
                "source_run_id": fetched.run_id or "",
                "export_run_id": run.info.run_id,
                "gates": "passed" if holds else "failed",
            },
        )
    if not holds:
        say(
            "GATE FAILED: the copied pipeline does not reproduce its smoke outputs; "
            f"{name} version {version} registered, alias {alias!r} not moved"
        )
        return 1
    say(f"registered {name} version {version} and moved @{alias} to it")
    return 0
