"""python -m training.export <task>: registered PyTorch model → verified ONNX bundle → registry.

Reads models:/<task>-torch@candidate, exports ONNX, checks parity against PyTorch on held-out
data, writes the bundle (manifest with checksums, specs, preprocessing, labels, smoke-test
arrays), registers it as a new version of <task> tagged with its source, and moves the alias
`production` only when every gate passes. A failed gate exits non-zero and moves nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from shared.bundle import write_manifest
from shared.registry import FetchedModel, configure_client, fetch, register
from training.export.onnx import (
    PARITY_ATOL,
    export_onnx,
    latency_ms,
    onnx_logits,
    parity,
    torch_logits,
)

TASKS = ("classify",)
SMOKE_SAMPLES = 8


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.export", description=__doc__.split("\n")[0]
    )
    parser.add_argument("task", choices=TASKS)
    parser.add_argument(
        "--source", help="registered torch model (default models:/<task>-torch@candidate)"
    )
    parser.add_argument("--name", help="registered bundle name (default: the task)")
    parser.add_argument("--alias", default="production", help="alias moved when every gate passes")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument(
        "--threads", type=int, default=0, help="onnxruntime threads for latency (0 = all cores)"
    )
    parser.add_argument("--cache-dir", type=Path, default=Path(".modelplane/export-cache"))
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    )
    return parser.parse_args(argv)


def say(message: str) -> None:
    print(f"[export] {message}", flush=True)


def build_bundle(
    fetched: FetchedModel, name: str, out: Path, threads: int, opset: int
) -> dict[str, Any]:
    """Export, evaluate and write the bundle `name` into `out`; returns the export's figures."""
    import torch

    from shared.media import ImageSpec
    from shared.onnx import OnnxModel
    from shared.settings import available_cores
    from training.data import load_test_set
    from training.models.classify import load_torch_bundle

    torch.set_num_threads(available_cores())
    source = fetched.bundle
    spec = ImageSpec.from_manifest(source.preprocessing)
    model = load_torch_bundle(source)
    test = load_test_set(spec, source.preprocessing.get("classes"))
    say(f"exporting ONNX (opset {opset}) of {source.name}, {len(test.inputs)} held-out images")
    export_onnx(model, torch.from_numpy(test.inputs[:2]), out / "model.onnx", opset)
    reference = torch_logits(model, test.inputs)
    inputs, outputs = source.inputs, source.outputs
    session = OnnxModel(out / "model.onnx", inputs, outputs, threads or available_cores())
    candidate = onnx_logits(session, test.inputs)
    check = parity(reference, candidate)
    accuracy = float(np.mean(candidate.argmax(1) == test.labels))
    latency = latency_ms(session, test.inputs[:1])
    say(
        f"parity: max abs diff {check.max_abs_diff:.2e} (gate {PARITY_ATOL:.0e}), "
        f"top-1 agreement {check.top1_agreement:.2%}; accuracy {accuracy:.2%}; "
        f"batch-1 latency p50 {latency['p50']:.2f} ms"
    )
    shutil.copyfile(source.file(source.manifest["torch_weights"]), out / "weights.safetensors")
    sample = test.inputs[:SMOKE_SAMPLES]
    np.save(out / "sample_inputs.npy", sample)
    np.save(out / "expected_outputs.fp32.npy", session.run({"input": sample})[0])
    figures = {
        "accuracy": accuracy,
        "parity_max_abs_diff": check.max_abs_diff,
        "parity_top1_agreement": check.top1_agreement,
        "parity_samples": check.samples,
        "latency_ms_p50": latency["p50"],
        "latency_ms_p99": latency["p99"],
    }
    write_manifest(
        out,
        {
            "task": source.task,
            "name": name,
            "source": {"model": fetched.name, "version": fetched.version, "run_id": fetched.run_id},
            "default_variant": "fp32",
            "variants": {
                "fp32": {
                    "file": "model.onnx",
                    "expected_outputs": "expected_outputs.fp32.npy",
                    "opset": opset,
                    **figures,
                }
            },
            "sample_inputs": "sample_inputs.npy",
            "inputs": [s.to_dict() for s in inputs],
            "outputs": [s.to_dict() for s in outputs],
            "preprocessing": source.preprocessing,
            "labels": source.labels,
            "architecture": source.manifest["architecture"],
            "torch_weights": "weights.safetensors",
        },
    )
    return {**figures, "parity_holds": check.holds}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import mlflow

    configure_client(args.tracking_uri, timeout_s=30, max_retries=3)
    source_uri = args.source or f"models:/{args.task}-torch@candidate"
    name = args.name or args.task
    say(f"fetching {source_uri} from {args.tracking_uri}")
    fetched = fetch(source_uri, args.cache_dir)
    mlflow.set_experiment(f"export-{args.task}")
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name=f"export {name}") as run:
        out = Path(tmp) / "bundle"
        out.mkdir()
        figures = build_bundle(fetched, name, out, args.threads, args.opset)
        mlflow.log_params(
            {
                "task": args.task,
                "source": source_uri,
                "source_version": fetched.version,
                "opset": args.opset,
            }
        )
        mlflow.log_metrics({k: float(v) for k, v in figures.items()})
        mlflow.set_tags(
            {"modelplane.source_model": fetched.name, "modelplane.source_version": fetched.version}
        )
        holds = bool(figures["parity_holds"])
        version = register(
            out,
            name,
            alias=args.alias if holds else None,
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
            "GATE FAILED: parity does not hold "
            f"(max abs diff {figures['parity_max_abs_diff']:.2e} > "
            f"{PARITY_ATOL:.0e} or top-1 disagreement); {name} version {version} registered, "
            f"alias {args.alias!r} left where it was"
        )
        return 1
    say(f"registered {name} version {version} and moved @{args.alias} to it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
