"""python -m training.export <task>: registered PyTorch model → gated bundle of ONNX variants.

Reads models:/<task>-torch@candidate and builds the variants (fp32 with onnxruntime's offline
optimization, int8 dynamic, int8 static QDQ, int8 QAT, structurally pruned, pruned int8) plus
an unstructured-sparsity study; measures each on the held-out digits; writes report.md and
tradeoffs.png; bundles the variants that pass the gates (accuracy drop, fp32 parity) with
checksums and smoke-test arrays; and registers the bundle as a new version of <task>, moving
`production` only when the bundle verifies. A failed gate registers nothing, moves nothing,
and exits 1 with the reason.

Other tasks have their own exporters, reached through the same command:
`python -m training.export generate|similarity|text-classify|text-generate [--help]`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import tempfile
from pathlib import Path

from shared.errors import BundleError
from shared.registration import register
from training.export import fetch_source, torch_native
from training.export.evaluate import Timing
from training.export.finetune import FineTune
from training.export.gates import Gates
from training.export.stage import VARIANTS, Options

TASKS = ("classify",)
# task → module whose main(argv) exports it (argv without the task name)
DELEGATED = {
    "generate": "training.export.generate_cli",
    "similarity": "training.export.similarity",
    "text-classify": "training.export.text_classify",
    "text-generate": "training.export.text_generate",
}
QUICK = {
    "recovery_epochs": 1,
    "qat_epochs": 1,
    "calibration_size": 64,
    "train_limit": 300,
    "study_sparsities": (0.5,),
    "latency_runs": 30,
    "throughput_runs": 5,
    "agreement_images": 4,
}
FULL = {
    "recovery_epochs": 5,
    "qat_epochs": 2,
    "calibration_size": 256,
    "train_limit": None,
    "study_sparsities": (0.5, 0.7, 0.9),
    "latency_runs": 200,
    "throughput_runs": 20,
    "agreement_images": 8,
}


def names(text: str) -> tuple[str, ...]:
    """`a,b` → ("a", "b") (argparse type)."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def fractions(text: str) -> tuple[float, ...]:
    """`0.5,0.7` → (0.5, 0.7), each in (0, 1) and increasing (argparse type)."""
    try:
        values = tuple(float(part) for part in names(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc
    if any(not 0 < v < 1 for v in values) or list(values) != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"{text!r}: need increasing fractions in (0, 1)")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("task", choices=TASKS + tuple(DELEGATED))
    add("--source", help="registered torch model (default models:/<task>-torch@candidate)")
    add("--name", help="registered bundle name (default: the task)")
    add("--alias", default="production", help="alias moved when every gate passes")
    add("--variants", type=names, default=VARIANTS, help=f"default {','.join(VARIANTS)}")
    add("--require", type=names, default=("fp32",), help="variants that must pass to promote")
    add("--max-accuracy-drop", type=float, default=1.0, help="points of top-1 vs PyTorch")
    add("--opset", type=int, default=18)
    add("--threads", type=int, default=0, help="onnxruntime threads to measure (0 = all cores)")
    add("--calibration-size", type=int, help="training images to calibrate on (256; quick 64)")
    add("--calibration-method", choices=("minmax", "entropy", "percentile"), default="minmax")
    add(
        "--float-stem",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the input convolution float in int8 variants (accuracy for ~15%% speed)",
    )
    add("--prune-ratio", type=float, default=0.5, help="share of channels structured pruning cuts")
    add("--recovery-epochs", type=int, help="fine-tuning after pruning (5; quick 1)")
    add("--qat-epochs", type=int, help="quantization-aware fine-tuning (2; quick 1)")
    add("--study-sparsities", type=fractions, help="unstructured study (0.5,0.7,0.9; quick 0.5)")
    add("--skip-study", action="store_true", help="no unstructured sparsity study")
    add(
        "--skip-torch",
        action="store_true",
        help="no PyTorch-runtime rows (TorchScript, torch.ao int8) in the report",
    )
    add("--train-limit", type=int, help="training images for fine-tuning (all; quick 300)")
    add("--latency-runs", type=int, help="timed batch-1 runs per variant (200; quick 30)")
    add("--throughput-runs", type=int, help="timed batch-32 runs per variant (20; quick 5)")
    add(
        "--agreement-images",
        type=int,
        help="held-out digits whose occlusion maps each variant must share with fp32 (8; "
        "quick 4; 0: none)",
    )
    add("--seed", type=int, default=0)
    add("--quick", action="store_true", help="small knobs for tests and smoke runs")
    add("--cache-dir", type=Path, default=Path(".modelplane/export-cache"))
    add(
        "--checkpoint-dir",
        type=Path,
        default=Path(".modelplane/export-checkpoints"),
        help="fine-tuning checkpoints; an interrupted export resumes from them",
    )
    add("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"))
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variant(s) {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    args.variants = tuple(v for v in VARIANTS if v in {"fp32", *args.variants})
    if args.skip_study:
        args.study_sparsities = ()
    if not 0 < args.prune_ratio < 1:
        p.error("--prune-ratio must be in (0, 1)")
    return args


def say(message: str) -> None:
    print(f"[export] {message}", flush=True)


def options(args: argparse.Namespace, checkpoints: Path, threads: int) -> Options:
    """The stage's options from the command line."""
    return Options(
        variants=args.variants,
        opset=args.opset,
        threads=threads,
        timing=Timing(args.latency_runs, args.throughput_runs),
        calibration_method=args.calibration_method,
        float_stem=args.float_stem,
        calibration_size=args.calibration_size,
        train_limit=args.train_limit,
        prune_ratio=args.prune_ratio,
        recovery=FineTune(args.recovery_epochs, lr=1e-3, seed=args.seed),
        qat=FineTune(args.qat_epochs, lr=1e-4, seed=args.seed),
        study=FineTune(1, lr=1e-4, seed=args.seed),
        study_sparsities=args.study_sparsities,
        torch_rows=() if args.skip_torch else torch_native.ROWS,
        agreement_images=args.agreement_images,
        checkpoint_dir=checkpoints,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        return importlib.import_module(DELEGATED[argv[0]]).main(argv[1:])
    args = parse_args(argv)
    import mlflow

    from shared.settings import available_cores
    from training.export.run import Export

    source_uri = args.source or f"models:/{args.task}-torch@candidate"
    name = args.name or args.task
    fetched = fetch_source(args.tracking_uri, source_uri, args.cache_dir)
    if fetched is None:
        return 2
    threads = args.threads or available_cores()
    checkpoints = args.checkpoint_dir / f"{fetched.name}-v{fetched.version}"
    gates = Gates(max_accuracy_drop=args.max_accuracy_drop, required=args.require)
    mlflow.set_experiment(f"export-{args.task}")
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name=f"export {name}") as run:
        mlflow.log_params(
            {k: str(v) for k, v in vars(args).items() if k not in {"tracking_uri", "cache_dir"}}
            | {"source_version": fetched.version, "threads_used": threads}
        )
        mlflow.set_tags(
            {"modelplane.source_model": fetched.name, "modelplane.source_version": fetched.version}
        )
        export = Export(fetched, name, options(args, checkpoints, threads), gates, Path(tmp), say)
        export.context.append(f"machine: {platform.machine()}, {available_cores()} cores")
        try:
            blocking = export.run()
        except BundleError as exc:  # e.g. a source trained on another data split
            mlflow.set_tag("modelplane.gates", "error")
            print(f"error: {exc}", file=sys.stderr)
            return 2
        export.log_to_mlflow()
        if blocking:
            mlflow.set_tag("modelplane.gates", "failed")
            print(export.table(), flush=True)
            say("GATE FAILED: " + "; ".join(blocking))
            say(f"nothing registered; alias {args.alias!r} of {name} left where it was")
            return 1
        version = register(
            export.bundle_dir,
            name,
            alias=args.alias,
            tags={
                "source_model": fetched.name,
                "source_version": fetched.version,
                "source_run_id": fetched.run_id or "",
                "export_run_id": run.info.run_id,
                "gates": "passed",
                "default_variant": export.default or "",
                "variants": ",".join(export.bundled()),
            },
        )
        mlflow.set_tag("modelplane.gates", "passed")
    print(export.table(), flush=True)
    say(
        f"registered {name} version {version} with variants {', '.join(export.bundled())} "
        f"(default {export.default}) and moved @{args.alias} to it"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
