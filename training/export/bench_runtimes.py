"""python -m training.export.bench_runtimes: onnxruntime vs PyTorch's runtime, speed only.

The classify architecture (ResNet-18 at 32x32 by default, random weights: accuracy is the
export report's business) built five ways — onnxruntime fp32 (offline-optimized) and int8
static QDQ, TorchScript fp32, torch.ao int8 static (FX) and dynamic — and timed in the export
stage's interleaved rounds with the same thread count. Needs no registry; about a minute on
2 cores. `modelplane bench runtimes`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from models.classify import architecture_config, build_model
from shared.bundle import TensorSpec
from shared.onnx import OnnxModel
from training.export import quantize, torch_native
from training.export.evaluate import Timing, timings
from training.export.onnx import Runner, export_onnx, ort_optimize, simplify


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.export.bench_runtimes", description=__doc__
    )
    p.add_argument("--architecture", default="resnet18", help="a models.classify architecture")
    p.add_argument("--size", type=int, default=32, help="input height and width")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of both runtimes")
    p.add_argument("--latency-runs", type=int, default=100)
    p.add_argument("--throughput-runs", type=int, default=12)
    return p.parse_args(argv)


def build(args: argparse.Namespace, work: Path) -> dict[str, Runner]:
    torch.manual_seed(0)
    net = build_model(architecture_config(args.architecture, 10)).eval()
    images = np.random.default_rng(0).standard_normal((64, 3, args.size, args.size))
    images = images.astype(np.float32)
    raw, clean, pre = work / "raw.onnx", work / "clean.onnx", work / "pre.onnx"
    export_onnx(net, torch.from_numpy(images[:2]), raw, 18, optimize=False)
    simplify(raw, clean)
    ort_optimize(clean, work / "fp32.onnx")
    quantize.prepare_for_quantization(clean, pre)
    quantize.quantize_int8_static(pre, work / "int8.onnx", images, "minmax", None, True)
    specs = (
        [TensorSpec("input", "float32", [-1, 3, args.size, args.size])],
        [TensorSpec("logits", "float32", [-1, 10])],
    )
    runners: dict[str, Runner] = {
        "onnxruntime fp32": OnnxModel(work / "fp32.onnx", *specs, args.threads),
        "onnxruntime int8-static": OnnxModel(work / "int8.onnx", *specs, args.threads),
    }
    for name in torch_native.ROWS:
        path = work / f"{name}.pt"
        runners[name], _, _ = torch_native.build(
            name, net, images, images, path, args.threads, lambda _: None
        )
    return runners


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"building {args.architecture} at {args.size}x{args.size} five ways", flush=True)
        runners = build(args, Path(tmp))
        before = os.getloadavg()[0]
        timing = Timing(args.latency_runs, args.throughput_runs, rounds=4)
        inputs = np.random.default_rng(1).standard_normal((32, 3, args.size, args.size))
        measured = timings(runners, inputs.astype(np.float32), timing)
    base = measured["onnxruntime fp32"]["throughput_ips"]
    after = os.getloadavg()[0]
    print(f"\n{args.threads} intra-op thread(s); load average {before:.1f} -> {after:.1f}")
    print("| runtime | p50 ms (b1) | img/s (b32) | x onnxruntime fp32 |\n|---|---|---|---|")
    for name, found in measured.items():
        print(
            f"| {name} | {found['latency_ms_p50']:.2f} | {found['throughput_ips']:.0f} | "
            f"{found['throughput_ips'] / base:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
