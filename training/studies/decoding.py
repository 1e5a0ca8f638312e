"""Decoding and exposure bias: scheduled sampling, beam width, temperature / top-k / top-p.

Teacher-forced vs free-running quality, scheduled sampling on and off, beam width, and
temperature / top-k / top-p against quality and diversity.

Trains the code summarizer (`training.text --task generate`) twice, with plain teacher forcing
and with scheduled sampling (`--scheduled-sampling`), on the same data and seed. For each
model, exposure bias is the gap between teacher-forced token accuracy (each position predicted
from the reference prefix) and free-running greedy token accuracy (from its own prefix), with
the free-running ROUGE-L. On the teacher-forced model it sweeps the beam width and the
sampling knobs: ROUGE-L and BLEU against the references, distinct-1/2 (diversity) of outputs.

Default: 3000 training functions, 398 s measured with `--threads 1` on the shared 2-core
machine (`--quick`: seconds).
"""

from __future__ import annotations

import argparse
import time

import mlflow
import numpy as np
import torch
from torch import nn

from models.decoding import DecodeOptions, generate
from models.text import EOS_ID
from training.studies import textlab
from training.studies.common import common_args, connect, markdown_table, write_report
from training.text_eval import distinct_n, generation_scores
from training.text_tasks import MAX_TARGET_TOKENS, TextData

BEAMS = (1, 2, 4, 8)
QUICK_TOKENS = 12  # --quick decodes short summaries (seconds)
SAMPLING = (
    ("temperature 0.3", {"temperature": 0.3}),
    ("temperature 0.7", {"temperature": 0.7}),
    ("temperature 1.0", {"temperature": 1.0}),
    ("temperature 1.5", {"temperature": 1.5}),
    ("top-k 5", {"top_k": 5}),
    ("top-k 40", {"top_k": 40}),
    ("top-p 0.5", {"top_p": 0.5}),
    ("top-p 0.9", {"top_p": 0.9}),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="modelplane study decoding", description=__doc__)
    common_args(parser, "decoding")
    parser.add_argument("--sampling", type=float, default=0.5, help="scheduled sampling share")
    parser.add_argument("--examples", type=int, help="held-out functions decoded (100; quick 6)")
    return parser.parse_args(argv)


def teacher_forced_accuracy(model: nn.Module, data: TextData, i: int) -> float:
    """Share of reference tokens predicted (argmax) from the reference prefix. Only a score:
    read as a sequence, these predictions would inherit the reference's words (an untrained
    model with tied embeddings echoes its input) and say nothing about decoding."""
    src = torch.tensor([data.inputs["test"][i]])
    tgt = torch.tensor([data.targets["test"][i]])
    with torch.no_grad():
        predicted = model(src, tgt[:, :-1]).argmax(-1)[0]
    return float((predicted == tgt[0, 1:]).float().mean())


def free_running_accuracy(tokens: list[int], target: list[int]) -> float:
    """Share of reference tokens (and its EOS) that the decoded sequence has at their place."""
    reference, decoded = target[1:], [*tokens, EOS_ID]
    return sum(a == b for a, b in zip(decoded, reference, strict=False)) / len(reference)


def decode(model: nn.Module, data: TextData, count: int, options: DecodeOptions) -> list[list[int]]:
    model.eval()
    return [
        generate(model, data.inputs["test"][i], DecodeOptions(**{**vars(options), "seed": i}))
        for i in range(count)
    ]


def texts(data: TextData, rows: list[list[int]]) -> list[str]:
    return [data.tokenizer.decode(tokens).strip() for tokens in rows]


def exposure(
    model: nn.Module, data: TextData, count: int, refs: list[str], max_new: int
) -> dict[str, float]:
    """Teacher-forced vs free-running greedy token accuracy (the gap is exposure bias) and
    the free-running ROUGE-L."""
    forced = [teacher_forced_accuracy(model, data, i) for i in range(count)]
    greedy = decode(model, data, count, DecodeOptions(max_new_tokens=max_new))
    free = [free_running_accuracy(t, data.targets["test"][i]) for i, t in enumerate(greedy)]
    row = {
        "forced_token_accuracy": float(np.mean(forced)),
        "free_token_accuracy": float(np.mean(free)),
        "free_rouge_l": generation_scores(texts(data, greedy), refs)["rouge_l"],
    }
    row["token_accuracy_gap"] = row["forced_token_accuracy"] - row["free_token_accuracy"]
    return row


def scored(data: TextData, rows: list[list[int]], refs: list[str], seconds: float) -> dict:
    outputs = texts(data, rows)
    return {
        **generation_scores(outputs, refs),
        "distinct_1": distinct_n(outputs, 1),
        "distinct_2": distinct_n(outputs, 2),
        "ms_per_example": 1000 * seconds / len(rows),
    }


def sweep(model: nn.Module, data: TextData, count: int, refs: list[str], quick: bool) -> dict:
    """Beam widths and sampling settings on one model: name → scores (each a child run)."""
    max_new = QUICK_TOKENS if quick else MAX_TARGET_TOKENS
    settings = [
        (f"beam {b}", DecodeOptions("beam", max_new, num_beams=b))
        for b in (BEAMS[1:2] if quick else BEAMS)
    ]
    settings += [
        (name, DecodeOptions("sample", max_new, **knobs))
        for name, knobs in (SAMPLING[::3] if quick else SAMPLING)
    ]
    results = {}
    for name, options in settings:
        started = time.perf_counter()
        rows = decode(model, data, count, options)
        results[name] = scored(data, rows, refs, time.perf_counter() - started)
        with mlflow.start_run(run_name=f"decode {name}", nested=True):
            mlflow.log_params({k: v for k, v in vars(options).items() if k != "seed"})
            mlflow.log_metrics(results[name])
        textlab.job.say(f"{name}: {results[name]}")
    return results


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    connect(options.threads, options.experiment)
    if options.quick:
        flags = ["--train-limit", "48", "--epochs", "2"]
    else:
        flags = [
            "--layers",
            "2",
            "--d-model",
            "64",
            "--heads",
            "4",
            "--vocab-size",
            "2000",
            "--train-limit",
            "3000",
            "--epochs",
            "3",
            "--extra-packages",
            "",
        ]
    base = textlab.text_args("generate", options.quick, *flags)
    data = textlab.load(base)
    count = min(options.examples or (4 if options.quick else 100), len(data.inputs["test"]))
    refs = [e.summary for e in data.raw["test"][:count]]
    gaps, baseline = {}, generation_scores([e.baseline() for e in data.raw["test"][:count]], refs)
    with mlflow.start_run(run_name="study decoding"):
        mlflow.set_tag("modelplane.study", "decoding")
        models = {}
        for name, share in (("teacher forcing", 0.0), ("scheduled sampling", options.sampling)):
            args = textlab.job.replace_args(base, scheduled_sampling=share)
            models[name] = textlab.train(name, args, data).model.eval()
            max_new = QUICK_TOKENS if options.quick else MAX_TARGET_TOKENS
            gaps[name] = exposure(models[name], data, count, refs, max_new)
            with mlflow.start_run(run_name=f"exposure {name}", nested=True):
                mlflow.log_metrics(gaps[name])
            textlab.job.say(f"exposure bias, {name}: {gaps[name]}")
        results = sweep(models["teacher forcing"], data, count, refs, options.quick)
        mlflow.log_metrics({f"baseline_{k}": v for k, v in baseline.items()})
        plots(results)
        write_report(options.out, "decoding.md", render(gaps, results, baseline, count))
    return 0


def plots(results: dict[str, dict]) -> None:
    beams = [(int(k.split()[1]), v) for k, v in results.items() if k.startswith("beam")]
    textlab.line_plot(
        {
            "ROUGE-L": ([b for b, _ in beams], [v["rouge_l"] for _, v in beams]),
            "BLEU": ([b for b, _ in beams], [v["bleu"] for _, v in beams]),
        },
        "beam width",
        "score",
        "plots/beam_width.png",
    )
    from matplotlib.figure import Figure

    from training import tracking

    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    for name, row in results.items():
        ax.scatter(row["distinct_2"], row["rouge_l"])
        ax.annotate(name, (row["distinct_2"], row["rouge_l"]), fontsize=7)
    ax.set_xlabel("distinct-2 (diversity)")
    ax.set_ylabel("ROUGE-L (quality)")
    ax.set_title("quality against diversity per decoding setting")
    fig.tight_layout()
    tracking.log_figure(fig, "plots/quality_vs_diversity.png")


def render(gaps: dict, results: dict, baseline: dict, count: int) -> str:
    exposure_rows = [
        [
            name,
            f"{g['forced_token_accuracy']:.3f}",
            f"{g['free_token_accuracy']:.3f}",
            f"{g['token_accuracy_gap']:+.3f}",
            f"{g['free_rouge_l']:.1f}",
        ]
        for name, g in gaps.items()
    ]
    decode_rows = [
        [
            name,
            f"{r['rouge_l']:.1f}",
            f"{r['bleu']:.2f}",
            f"{r['distinct_1']:.3f}",
            f"{r['distinct_2']:.3f}",
            f"{r['ms_per_example']:.1f}",
        ]
        for name, r in results.items()
    ]
    return (
        f"# Decoding and exposure bias ({count} held-out functions)\n\n"
        "## Teacher-forced vs free-running (greedy)\n\n"
        + markdown_table(
            ["training", "forced token acc", "free token acc", "gap", "free ROUGE-L"],
            exposure_rows,
        )
        + "\n## Decoding settings (teacher-forcing model)\n\n"
        + markdown_table(
            ["decoding", "ROUGE-L", "BLEU", "distinct-1", "distinct-2", "ms / example"], decode_rows
        )
        + f"\nCopy-the-function-name baseline: ROUGE-L {baseline['rouge_l']:.1f}, "
        f"BLEU {baseline['bleu']:.2f}.\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
