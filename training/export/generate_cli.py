"""python -m training.export generate: generate-torch@candidate → `generate` bundle → registry."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from training.export.generate import Options, export_generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.export generate", description=__doc__)
    parser.add_argument("--source", default="models:/generate-torch@candidate")
    parser.add_argument("--name", default="generate", help="registered bundle name")
    parser.add_argument("--alias", default="production", help="alias moved when the gates pass")
    parser.add_argument(
        "--onnx",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="try an ONNX UNet variant (kept only when faster and in parity)",
    )
    parser.add_argument(
        "--keep-onnx",
        action="store_true",
        help="keep the ONNX variant (in parity) even when slower; it is the default only if faster",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch/onnxruntime threads (0 = cores)"
    )
    parser.add_argument("--timing-runs", type=int, default=3, help="generations timed per variant")
    parser.add_argument("--quick", action="store_true", help="one timed generation per variant")
    parser.add_argument("--cache-dir", type=Path, default=Path(".modelplane/export-cache"))
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.timing_runs = 1
    return export_generate(
        tracking_uri=args.tracking_uri,
        source=args.source,
        name=args.name,
        alias=args.alias,
        cache_dir=args.cache_dir,
        options=Options(args.onnx, args.keep_onnx, args.threads, args.timing_runs),
    )


if __name__ == "__main__":
    sys.exit(main())
