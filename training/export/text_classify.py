"""python -m training.export text-classify: text-classify-torch@candidate → `text-classify` bundle.

Exports the language-ID transformer to ONNX (input `input`: int64 token ids (batch, time), both
axes dynamic; output `logits`), adds an int8 dynamic-quantized variant (onnxruntime's
MatMulInteger: the kind of quantization that suits attention and linear layers), measures
both on the held-out test sentences (padded to one width: the model ignores padding), gates
them like the image export (fp32 parity with PyTorch, accuracy drop), and registers the bundle
(ONNX variants + tokenizer.json + safetensors + report) with `production` when the gates pass.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from models.text import TOKENIZER_FILE, load_text_bundle
from shared.bundle import Bundle
from shared.cache import FetchedModel
from shared.errors import BundleError
from shared.onnx import OnnxModel
from shared.registration import register
from shared.settings import available_cores
from training import text_data, tracking
from training.export import fetch_source, report, writer
from training.export.evaluate import Figures, Timing, quality, timings
from training.export.gates import Gates, fastest, judge
from training.export.onnx import parity, torch_logits
from training.export.quantize import quantize_int8_dynamic
from training.text_tasks import pad

VARIANTS = ("fp32", "int8-dynamic")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.export text-classify", description=__doc__)
    add = p.add_argument
    add("--source", default="models:/text-classify-torch@candidate")
    add("--name", default="text-classify", help="registered bundle name")
    add("--alias", default="production")
    add("--max-accuracy-drop", type=float, default=1.0, help="points of accuracy vs PyTorch")
    add("--require", default="fp32", help="variants that must pass to promote (comma list)")
    add("--opset", type=int, default=18)
    add("--threads", type=int, default=0, help="onnxruntime threads (0 = available cores)")
    add("--test-per-language", type=int, default=300, help="held-out sentences per language")
    add("--quick", action="store_true", help="fewer test sentences and timed runs")
    add("--cache-dir", type=Path, default=Path(".modelplane/export-cache"))
    add("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"))
    args = p.parse_args(argv)
    if args.quick:
        args.test_per_language = min(args.test_per_language, 20)
    return args


def say(message: str) -> None:
    print(f"[export text-classify] {message}", flush=True)


def test_inputs(fetched: FetchedModel, per_language: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out split (another seed than training), tokenized and padded to one width."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(fetched.bundle.file(TOKENIZER_FILE)))
    split = text_data.language_split("test", per_language)
    if split.label_names != fetched.bundle.labels:
        raise BundleError(f"labels {fetched.bundle.labels} differ from the data's")
    limit = int(fetched.bundle.preprocessing["max_len"])
    rows = [e.ids[:limit] for e in tokenizer.encode_batch(split.texts)]
    return pad(rows).numpy(), np.array(split.labels)


def export_graph(model: torch.nn.Module, max_len: int, path: Path, opset: int) -> None:
    """Both the batch and the sequence axis stay dynamic (sequence up to the model's max_len)."""
    axes = {0: torch.export.Dim("batch", min=1, max=4096), 1: torch.export.Dim("time", max=max_len)}
    torch.onnx.export(
        model.eval(), (torch.full((2, 8), 5, dtype=torch.long),), str(path),
        input_names=["input"], output_names=["logits"], dynamic_shapes=(axes,),
        opset_version=opset, dynamo=True, external_data=False, verbose=False,
    )  # fmt: skip


def measure(
    work: Path,
    model: torch.nn.Module,
    specs: Bundle,
    data: tuple[np.ndarray, np.ndarray],
    args: argparse.Namespace,
) -> tuple[list[Figures], float]:
    """Figures of every variant and the PyTorch reference accuracy."""
    inputs, labels = data
    reference = torch_logits(model, inputs)
    reference_accuracy = float(np.mean(reference.argmax(1) == labels))
    threads = args.threads or available_cores()
    sessions, figures = {}, []
    top1 = reference.argmax(1)
    for name in VARIANTS:
        path = work / f"model.{name}.onnx"
        session = OnnxModel(path, specs.inputs, specs.outputs, threads)
        scores, logits = quality(session, inputs, labels, top1)
        check = parity(reference, logits)
        fig = Figures(
            name=name, file=writer.variant_file(name), size_bytes=path.stat().st_size,
            params=tracking.parameter_count(model), flops=0,
            max_abs_diff_torch=check.max_abs_diff if name == "fp32" else None, **scores,
        )  # fmt: skip
        fig.details["top1_agreement_torch"] = check.top1_agreement
        sessions[name] = session
        figures.append(fig)
    timing = Timing(30, 5) if args.quick else Timing(200, 30)
    measured = timings(sessions, inputs, timing)
    for fig in figures:
        for key, value in measured[fig.name].items():
            setattr(fig, key, value)
    return figures, reference_accuracy


def build(fetched: FetchedModel, work: Path, out: Path, args: argparse.Namespace) -> list[str]:
    """Export, quantize, measure, gate and write the bundle; returns what blocks promotion."""
    model = load_text_bundle(fetched.bundle)
    max_len = int(fetched.bundle.preprocessing["max_len"])
    export_graph(model, max_len, work / "model.fp32.onnx", args.opset)
    quantize_int8_dynamic(work / "model.fp32.onnx", work / "model.int8-dynamic.onnx")
    inputs, labels = test_inputs(fetched, args.test_per_language)
    figures, reference_accuracy = measure(work, model, fetched.bundle, (inputs, labels), args)
    gates = Gates(args.max_accuracy_drop, required=tuple(args.require.split(",")))
    blocking = judge(figures, reference_accuracy, gates)
    default = fastest(figures) if any(f.in_bundle for f in figures) else None
    shutil.copyfile(fetched.bundle.file(TOKENIZER_FILE), out / TOKENIZER_FILE)
    context = [
        f"source: {fetched.name} version {fetched.version}",
        f"held-out sentences: {len(labels)}; PyTorch accuracy {reference_accuracy:.4f}",
    ]
    notes = ["int8-dynamic quantizes weights per channel and activations per batch at run time."]
    (out / writer.REPORT).write_text(report.markdown(figures, default, context, notes, blocking))
    report.tradeoff_figure(figures).savefig(out / writer.PLOT, dpi=110)
    print(report.table(figures, default), flush=True)
    if blocking:
        return blocking
    info = {"reference_accuracy": reference_accuracy, "test_sentences": len(labels)}
    writer.write_bundle(out, fetched, args.name, figures, work, inputs[:8], default or "", info)
    writer.verify(out)
    _log(figures, reference_accuracy)
    return []


def _log(figures: list[Figures], reference_accuracy: float) -> None:
    import mlflow

    metrics = {"reference_accuracy": reference_accuracy}
    for fig in figures:
        for key in ("accuracy", "macro_f1", "agreement_fp32", "size_bytes", "throughput_ips"):
            metrics[f"{fig.name}.{key}"] = float(getattr(fig, key))
    fp32 = figures[0]
    metrics["parity_max_abs_diff"] = float(fp32.max_abs_diff_torch or 0.0)
    metrics["parity_top1_agreement"] = float(fp32.details["top1_agreement_torch"])
    mlflow.log_metrics(metrics)


def main(argv: list[str]) -> int:
    import mlflow

    args = parse_args(argv)
    torch.set_num_threads(args.threads or available_cores())
    fetched = fetch_source(args.tracking_uri, args.source, args.cache_dir)
    if fetched is None:
        return 2
    mlflow.set_experiment("export-text-classify")
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name=f"export {args.name}"):
        work, out = Path(tmp) / "work", Path(tmp) / "bundle"
        work.mkdir()
        out.mkdir()
        blocking = build(fetched, work, out, args)
        if blocking:
            say("GATE FAILED: " + "; ".join(blocking) + f"; nothing registered, @{args.alias} kept")
            return 1
        version = register(out, args.name, alias=args.alias, tags={
            "source_model": fetched.name, "source_version": fetched.version,
            "source_run_id": fetched.run_id or "", "gates": "passed",
        })  # fmt: skip
    say(f"registered {args.name} version {version} and moved @{args.alias} to it")
    return 0
