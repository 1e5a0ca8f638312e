"""python -m training.export similarity: similarity-torch@candidate → the `similarity` bundle.

The encoder becomes ONNX (fp32, onnxruntime-optimized offline, in parity with PyTorch within
1e-4, unit-length embeddings from the graph itself) and, unless left out, an int8 static QDQ
variant calibrated on training images. Each variant is measured on the held-out digits exactly
as training measured the PyTorch model (verification AUC/EER, recall@1/@5, mAP), gets its own
accuracy-maximizing threshold chosen on validation pairs, and its own gallery: the embeddings of
the reference set (the training images by default) computed by that very variant, so queries
and gallery always share one embedding space.

The gallery is `gallery.<variant>.npy` (float32, read with allow_pickle=False) plus
`gallery.json` (ids and labels). No serialized FAISS index ships: the service rebuilds the index
(flat inner product, or HNSW with `--index hnsw`) from the checksummed embeddings at load, which
takes milliseconds for thousands of items and keeps the bundle free of opaque binary blobs.
`production` moves only when fp32 parity holds; an int8 variant that loses more than
`--max-recall-drop` points of recall@1 is left out of the bundle.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from shared.bundle import Bundle
from shared.cache import FetchedModel
from shared.errors import BundleError, RegistryError
from shared.onnx import OnnxModel
from shared.registration import register
from training.export import fetch_source
from training.export.similarity_bundle import HeldOut, Variant, run_encoder, write_bundle

GALLERY_SOURCES = ("train", "train+val", "none")
INDEXES = ("flat", "hnsw")
VARIANTS = ("fp32", "int8-static")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.export similarity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = p.add_argument
    add("--source", default="models:/similarity-torch@candidate")
    add("--name", default="similarity", help="registered bundle name")
    add("--alias", default="production", help="alias moved when the gates pass")
    add("--variants", default="fp32,int8-static", help="fp32 is always built")
    add("--gallery", choices=GALLERY_SOURCES, default="train", help="reference set of the index")
    add("--index", choices=INDEXES, default="flat", help="FAISS index the service builds")
    add("--hnsw-m", type=int, default=32, help="HNSW graph degree (with --index hnsw)")
    add("--opset", type=int, default=18)
    add("--calibration-size", type=int, help="training images for int8 (256; quick 64)")
    add("--max-recall-drop", type=float, default=1.0, help="int8 recall@1 loss allowed (points)")
    add("--threads", type=int, default=0, help="onnxruntime/torch threads (0 = cores)")
    add("--timing-runs", type=int, help="timed runs per variant (200; quick 20)")
    add("--quick", action="store_true", help="small knobs for tests")
    add("--cache-dir", type=Path, default=Path(".modelplane/export-cache"))
    add("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"))
    args = p.parse_args(argv)
    requested = {"fp32", *(v.strip() for v in args.variants.split(",") if v.strip())}
    unknown = requested - set(VARIANTS)
    if unknown:
        p.error(f"unknown variant(s) {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    args.variants = [v for v in VARIANTS if v in requested]
    args.calibration_size = args.calibration_size or (64 if args.quick else 256)
    args.timing_runs = args.timing_runs or (20 if args.quick else 200)
    return args


def say(message: str) -> None:
    print(f"[export similarity] {message}", flush=True)


def load_data(bundle: Bundle, gallery: str) -> HeldOut:
    """The fixed digits splits through the bundle's preprocessing; refuses another split."""
    from shared.media import ImageSpec
    from training import data as digits

    splits = digits.load_splits(None)
    expected = bundle.manifest.get("source", {}).get("split_hash")
    if expected and expected != digits.split_hash(splits):
        raise BundleError("the source model was trained on another data split; refusing it")
    spec = ImageSpec.from_manifest(bundle.preprocessing)
    inputs = {name: digits.preprocess(s.images, spec) for name, s in splits.items()}
    labels = {name: s.labels for name, s in splits.items()}
    names = [n for n in ("train", "val") if gallery != "none" and n in gallery.split("+")]
    rows = np.concatenate([inputs[n] for n in names]) if names else inputs["test"][:0]
    ids = [f"{n}-{i}" for n in names for i in splits[n].indices]
    gallery_labels = [splits["test"].label_names[y] for n in names for y in splits[n].labels]
    return HeldOut(inputs, labels, rows, ids, gallery_labels)


def build_onnx(
    fetched: FetchedModel, args: argparse.Namespace, data: HeldOut, work: Path
) -> list[Variant]:
    """fp32 (parity-checked against PyTorch) and, when asked, int8 static QDQ."""
    import torch

    from models.similarity import OUTPUT_NAME, load_torch_bundle
    from training.export import quantize
    from training.export.onnx import PARITY_ATOL, export_onnx, ort_optimize, simplify
    from training.similarity_eval import embed

    model = load_torch_bundle(fetched.bundle)
    raw, clean = work / "raw.onnx", work / "clean.onnx"
    export_onnx(
        model, torch.from_numpy(data.inputs["test"][:2]), raw, args.opset, False, OUTPUT_NAME
    )
    simplify(raw, clean)
    variants = [Variant("fp32", work / "model.onnx")]
    ort_optimize(clean, variants[0].path)
    reference = embed(model, data.inputs["test"])
    got = run_encoder(variants[0], fetched.bundle, data.inputs["test"], args.threads)
    diff = float(np.max(np.abs(got - reference)))
    variants[0].metrics["max_abs_diff_torch"] = diff
    say(f"fp32: ONNX opset {args.opset}, max |ORT - torch| {diff:.2e} on {len(got)} test images")
    if diff > PARITY_ATOL:
        variants[0].gate = f"fp32 parity {diff:.2e} > {PARITY_ATOL:.0e}"
    if "int8-static" in args.variants:
        pre = work / "pre.onnx"
        quantize.prepare_for_quantization(clean, pre)
        int8 = Variant("int8-static", work / "model.int8-static.onnx")
        quantize.quantize_int8_static(pre, int8.path, data.inputs["train"][: args.calibration_size])
        variants.append(int8)
    return variants


def measure(
    variants: list[Variant], bundle: Bundle, data: HeldOut, args: argparse.Namespace
) -> None:
    """Held-out metrics, threshold and gallery of every variant; the int8 recall gate."""
    from training.export.evaluate import Timing, timings
    from training.similarity_eval import evaluate

    for variant in variants:
        embedded = {
            n: run_encoder(variant, bundle, x, args.threads) for n, x in data.inputs.items()
        }
        result = evaluate(
            (embedded["val"], data.labels["val"]),
            (embedded["test"], data.labels["test"]),
            (embedded["train"], data.labels["train"]),
        )
        variant.metrics.update(result.metrics)
        variant.threshold = result.threshold
        variant.gallery = run_encoder(variant, bundle, data.gallery_rows, args.threads)
    base = variants[0].metrics["test_recall_at_1"]
    for variant in variants[1:]:
        drop = (base - variant.metrics["test_recall_at_1"]) * 100
        if drop > args.max_recall_drop:
            variant.gate = f"recall@1 drop {drop:.2f} > {args.max_recall_drop} points"
    models = {
        v.name: OnnxModel(v.path, bundle.inputs, bundle.outputs, args.threads or 1)
        for v in variants
    }
    runs = args.timing_runs
    for name, figures in timings(
        models, data.inputs["test"], Timing(runs, max(5, runs // 10))
    ).items():
        next(v for v in variants if v.name == name).metrics.update(figures)
    for v in variants:
        m = v.metrics
        say(
            f"{v.name}: AUC {m['test_auc']:.4f}, EER {m['test_eer']:.2%}, recall@1 "
            f"{m['test_recall_at_1']:.2%}, recall@5 {m['test_recall_at_5']:.2%}, mAP "
            f"{m['test_map']:.4f}, threshold {v.threshold:.4f}, p50 {m['latency_ms_p50']:.2f} ms, "
            f"{m['throughput_ips']:.0f} img/s at batch 32{'  GATE: ' + v.gate if v.gate else ''}"
        )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    import mlflow
    import torch

    from shared.settings import available_cores

    args.threads = args.threads or available_cores()
    torch.set_num_threads(args.threads)
    fetched = fetch_source(args.tracking_uri, args.source, args.cache_dir)
    if fetched is None:
        return 2
    try:
        data = load_data(fetched.bundle, args.gallery)
    except (RegistryError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mlflow.set_experiment("export-similarity")
    with (
        tempfile.TemporaryDirectory() as tmp,
        mlflow.start_run(run_name=f"export {args.name}") as run,
    ):
        work, out = Path(tmp) / "work", Path(tmp) / "bundle"
        work.mkdir()
        out.mkdir()
        params = {
            k: str(v) for k, v in vars(args).items() if k not in {"tracking_uri", "cache_dir"}
        }
        mlflow.log_params(params | {"source_version": fetched.version})
        variants = build_onnx(fetched, args, data, work)
        measure(variants, fetched.bundle, data, args)
        for v in variants:
            mlflow.log_metrics(
                {f"{v.name}.{k}": x for k, x in v.metrics.items()}
                | {f"{v.name}.threshold": v.threshold}
            )
        if variants[0].gate:
            mlflow.set_tag("modelplane.gates", "failed")
            say(f"GATE FAILED: {variants[0].gate}; nothing registered")
            return 1
        bundle = write_bundle(out, fetched, args, variants, data)
        version = register(
            out,
            args.name,
            alias=args.alias,
            tags={
                "source_model": fetched.name,
                "source_version": fetched.version,
                "source_run_id": fetched.run_id or "",
                "export_run_id": run.info.run_id,
                "gates": "passed",
                "default_variant": "fp32",
                "variants": ",".join(bundle.variants),
                "gallery_size": str(len(data.gallery_ids)),
            },
        )
        mlflow.set_tag("modelplane.gates", "passed")
    say(
        f"registered {args.name} version {version} with variants {', '.join(bundle.variants)} "
        f"(default fp32), gallery of {len(data.gallery_ids)} {args.gallery} images "
        f"({args.index} index), and moved @{args.alias} to it"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
