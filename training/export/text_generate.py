"""python -m training.export text-generate: text-generate-torch@candidate → `text-generate` bundle.

Two variants of the summarizer: `torch` (safetensors weights, run under `inference_mode`) and
`onnx` (an encoder graph and decoder graphs that take and return the KV cache, see
`models.text_onnx`). The ONNX variant enters the bundle only when it decodes the smoke
cases to exactly PyTorch's tokens (greedy, beam and sampling); the default is the faster of the
variants that entered, measured as tokens/s of greedy decoding at 128 new tokens. The bundle
also carries the tokenizer, the config, the smoke cases (the service reproduces them at load)
and tokens/s of every variant with and without the KV cache.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from models.decoding import (
    CHECKS,
    GREEDY,
    DecodeOptions,
    generate,
    reproduces,
)
from models.text import TOKENIZER_FILE, load_text_bundle
from models.text_input import RAW_INPUT, code_input
from models.text_onnx import (
    DECODER_INIT,
    DECODER_STEP,
    ENCODER,
    OnnxSeq2Seq,
    export_graphs,
)
from shared.bundle import MANIFEST, open_bundle, write_manifest
from shared.cache import FetchedModel
from shared.errors import BundleError
from shared.registration import register
from shared.settings import available_cores
from training import text_data
from training.export import fetch_source

SMOKE_FILE = "smoke.json"
BENCH_TOKENS = 128
ONNX_GRAPHS = [ENCODER, DECODER_INIT, DECODER_STEP]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.export text-generate", description=__doc__)
    add = p.add_argument
    add("--source", default="models:/text-generate-torch@candidate")
    add("--name", default="text-generate", help="registered bundle name")
    add("--alias", default="production")
    add("--threads", type=int, default=0, help="torch threads (0 = available cores)")
    add("--smoke-examples", type=int, default=4, help="held-out functions in the smoke test")
    add("--timing-runs", type=int, default=3, help="timed 128-token generations per mode")
    add("--quick", action="store_true", help="one timed run, shorter generations")
    add("--onnx", action=argparse.BooleanOptionalAction, default=True, help="try the ONNX variant")
    add("--cache-dir", type=Path, default=Path(".modelplane/export-cache"))
    add("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"))
    args = p.parse_args(argv)
    if args.quick:
        args.timing_runs = 1
    return args


def say(message: str) -> None:
    print(f"[export text-generate] {message}", flush=True)


def tokens_per_second(model: torch.nn.Module, src: list[int], cache: bool, runs: int) -> float:
    """Median tokens/s of greedy decoding of exactly BENCH_TOKENS tokens (EOS ignored)."""
    options = DecodeOptions(max_new_tokens=BENCH_TOKENS, use_cache=cache, stop_at_eos=False)
    rates = []
    for _ in range(runs):
        started = time.perf_counter()
        produced = generate(model, src, options)
        rates.append(len(produced) / (time.perf_counter() - started))
    return sorted(rates)[len(rates) // 2]


def smoke_cases(fetched: FetchedModel, model: torch.nn.Module, count: int) -> list[dict]:
    """Held-out functions (test modules) and the greedy tokens the PyTorch model gives them."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(fetched.bundle.file(TOKENIZER_FILE)))
    limit = int(fetched.bundle.preprocessing["max_len"])
    input_format = fetched.bundle.preprocessing.get("input_format", RAW_INPUT)
    cases = []
    for example in text_data.code_splits(limit=count)["test"][:count]:
        ids = tokenizer.encode(code_input(example.source, input_format)).ids[:limit]
        text = tokenizer.decode(ids)
        case = {"text": text, "src": ids, "greedy": generate(model, ids, GREEDY)}
        case.update({o.strategy: generate(model, ids, o) for o in CHECKS})
        cases.append(case)
    return cases


def speed(engine: Any, src: list[int], runs: int, name: str) -> dict[str, float]:
    """Tokens/s with and without the KV cache, and their ratio, named `<variant>_...`."""
    cached = tokens_per_second(engine, src, True, runs)
    uncached = tokens_per_second(engine, src, False, runs)
    return {
        f"{name}_tokens_per_s_kv_cache": cached,
        f"{name}_tokens_per_s_no_cache": uncached,
        f"{name}_kv_cache_speedup": cached / uncached,
    }


def onnx_variant(model: torch.nn.Module, out: Path, cases: list[dict], threads: int) -> bool:
    """Export the ONNX graphs into `out`; keep them only when they reproduce PyTorch."""
    files = export_graphs(model, out)
    if reproduces(OnnxSeq2Seq(out, model.config, threads), cases):
        return True
    say("ONNX decoding differs from PyTorch's tokens: the onnx variant is left out")
    for file in files:
        (out / file).unlink()
    return False


def build(fetched: FetchedModel, out: Path, args: argparse.Namespace) -> dict[str, float]:
    """Copy weights + tokenizer, add ONNX, record smoke cases and speed, write the manifest."""
    model = load_text_bundle(fetched.bundle)
    source = fetched.bundle
    threads = args.threads or available_cores()
    for file in source.manifest["files"]:
        if file != MANIFEST:
            shutil.copyfile(source.file(file), out / file)
    cases = smoke_cases(fetched, model, args.smoke_examples)
    (out / SMOKE_FILE).write_text(json.dumps(cases))
    src = cases[0]["src"]
    figures = speed(model, src, args.timing_runs, "torch")
    variants = {"torch": dict(source.variants["torch"])}
    if args.onnx and onnx_variant(model, out, cases, threads):
        engine = OnnxSeq2Seq(out, model.config, threads)
        figures.update(speed(engine, src, args.timing_runs, "onnx"))
        variants["onnx"] = {"file": DECODER_STEP, "format": "onnx", "graphs": ONNX_GRAPHS}
    default = max(variants, key=lambda v: figures[f"{v}_tokens_per_s_kv_cache"])
    say(", ".join(f"{k} {v:.1f}" for k, v in figures.items()) + f"; default {default}")
    keep = {k: v for k, v in source.manifest.items() if k not in {"files", "format", "created"}}
    write_manifest(
        out,
        {
            **keep,
            "name": args.name,
            "variants": variants,
            "default_variant": default,
            "source": {"model": fetched.name, "version": fetched.version, "run_id": fetched.run_id},
            "smoke_test": SMOKE_FILE,
            "export": {"threads": threads, **figures},
        },
    )
    reloaded = load_text_bundle(open_bundle(out))
    if not reproduces(reloaded, cases):
        raise BundleError("the bundled weights do not reproduce the smoke-test tokens")
    return figures


def main(argv: list[str]) -> int:
    import mlflow

    args = parse_args(argv)
    torch.set_num_threads(args.threads or available_cores())
    fetched = fetch_source(args.tracking_uri, args.source, args.cache_dir)
    if fetched is None:
        return 2
    mlflow.set_experiment("export-text-generate")
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name=f"export {args.name}"):
        out = Path(tmp)
        try:
            speed = build(fetched, out, args)
        except BundleError as exc:
            say(f"GATE FAILED: {exc}; nothing registered, @{args.alias} kept")
            return 1
        mlflow.log_metrics(speed)
        version = register(out, args.name, alias=args.alias, tags={
            "source_model": fetched.name, "source_version": fetched.version,
            "source_run_id": fetched.run_id or "", "gates": "passed",
            "variants": ",".join(open_bundle(out).variants),
        })  # fmt: skip
    say(f"registered {args.name} version {version} and moved @{args.alias} to it")
    return 0
