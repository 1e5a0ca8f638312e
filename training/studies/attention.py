"""Heads and the cost of attention: head importance and pruning, attention entropy, O(n^2).

Trains the language-ID classifier (`training.text --task classify`), then: each head's
importance (test accuracy lost when it alone is masked; a gradient score |dL/dgate|, Michel et
al. 2019, on the val split), heads pruned least-important-first (by either score, and in a
random order as the yardstick) with the accuracy left, each head's attention entropy and peak
weight, and the measured time and memory of attention against sequence length, written out
(`models.attention`) vs `F.scaled_dot_product_attention`, with the fitted exponent of time ~ n^k.

Default: 101 s measured with `--threads 1` on the shared 2-core machine (`--quick`: seconds).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attention import scaled_dot_product_attention
from models.attention_map import head_entropy
from training.studies import textlab
from training.studies.common import common_args, connect, markdown_table, write_report
from training.text_tasks import TASKS, TextData

LENGTHS = (128, 256, 512, 1024, 2048, 4096)
QUICK_LENGTHS = (32, 64, 128)
FIT_FROM = 3  # the exponent is fitted on the longest lengths (short ones are overhead-bound)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="modelplane study attention", description=__doc__)
    common_args(parser, "attention")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


@contextmanager
def head_gates(model: nn.Module, gates: Tensor) -> Iterator[None]:
    """Scale each encoder head's output by gates[layer, head] (0 masks it) before the output
    projection, where the heads are still apart."""
    handles = []
    for layer, block in enumerate(model.encoder.blocks):  # type: ignore[union-attr]
        attn = block.attn

        def scale(_: nn.Module, inputs: tuple[Tensor], layer: int = layer, a=attn) -> tuple:
            (x,) = inputs
            batch, time, _ = x.shape
            heads = x.view(batch, time, a.heads, a.head_dim) * gates[layer].to(x.dtype)[:, None]
            return (heads.reshape(batch, time, -1),)

        handles.append(attn.out_proj.register_forward_pre_hook(scale))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def accuracy(model: nn.Module, data: TextData, gates: Tensor, split: str = "test") -> float:
    with head_gates(model, gates):
        predicted = TASKS["classify"].predict(model, data, split)
    return float(np.mean(predicted == np.array(data.targets[split])))


def gradient_scores(model: nn.Module, data: TextData, shape: tuple[int, int]) -> np.ndarray:
    """|dL/dgate| summed over the val split's batches: how much the loss leans on each head."""
    gates = torch.ones(shape, requires_grad=True)
    total = np.zeros(shape)
    model.eval()
    rows = len(data.inputs["val"])
    with head_gates(model, gates):
        for start in range(0, rows, 64):
            gates.grad = None
            batch = data.batch("val", range(start, min(start + 64, rows)))
            TASKS["classify"].loss(model, batch, 0.0).backward()
            total += gates.grad.abs().numpy()  # type: ignore[union-attr]
    model.zero_grad(set_to_none=True)
    return total


def prune_curve(model: nn.Module, data: TextData, order: list[int], shape: tuple) -> list[float]:
    """Test accuracy with the first k heads of `order` masked, k = 0 .. all but one."""
    gates = torch.ones(shape)
    curve = [accuracy(model, data, gates)]
    for flat in order[:-1]:
        gates.view(-1)[flat] = 0.0
        curve.append(accuracy(model, data, gates))
    return curve


def entropy_per_head(model: nn.Module, data: TextData, count: int) -> dict[str, np.ndarray]:
    """Mean entropy, entropy / log(tokens) and peak weight per (layer, head) on test texts."""
    totals = {"entropy": 0.0, "normalized": 0.0, "peak": 0.0}
    model.eval()
    for i in range(count):
        ids = torch.tensor([data.inputs["test"][i]])
        with torch.no_grad():
            maps = [m[0].numpy() for m in model.attention_maps(ids)]  # type: ignore[operator]
        entropy = np.stack([head_entropy(m) for m in maps])
        totals["entropy"] = totals["entropy"] + entropy
        totals["normalized"] = totals["normalized"] + entropy / np.log(max(2, ids.size(1)))
        totals["peak"] = totals["peak"] + np.stack([m.max(-1).mean(-1) for m in maps])
    return {k: np.asarray(v) / count for k, v in totals.items()}


def attention_cost(lengths: tuple[int, ...], heads: int = 4, head_dim: int = 32) -> list[dict]:
    """Seconds and allocated bytes of one attention call per length, both implementations."""
    rows = []
    for length in lengths:
        q, k, v = torch.randn(3, 1, heads, length, head_dim).unbind(0)
        calls = {
            "scratch": lambda q=q, k=k, v=v: scaled_dot_product_attention(q, k, v),
            "sdpa": lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v),
        }
        row: dict[str, float] = {"length": length}
        for name, call in calls.items():
            with torch.inference_mode():
                row[f"{name}_ms"] = 1000 * textlab.seconds_of(call, repeats=3)
                row[f"{name}_mib"] = textlab.allocated_bytes(call) / 2**20
        textlab.job.say(f"attention at n={length}: {row}")
        rows.append(row)
    return rows


def exponent(rows: list[dict], key: str) -> float:
    """k in time ~ n^k: the slope of log time against log length over the longest lengths."""
    tail = rows[-FIT_FROM:] if len(rows) > FIT_FROM else rows
    return float(
        np.polyfit(np.log([r["length"] for r in tail]), np.log([r[key] for r in tail]), 1)[0]
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    connect(options.threads, options.experiment)
    flags = ["--layers", "2", "--seed", str(options.seed)]
    if options.quick:
        flags += ["--train-limit", "24"]
    else:
        flags += ["--train-limit", "300", "--epochs", "3", "--vocab-size", "2000"]
    args = textlab.text_args("classify", options.quick, *flags)
    data = textlab.load(args)
    with mlflow.start_run(run_name="study attention"):
        mlflow.set_tag("modelplane.study", "attention")
        trained = textlab.train("classifier", args, data)
        model = trained.model.eval()
        shape = (trained.config.layers, trained.config.heads)
        full = accuracy(model, data, torch.ones(shape))
        drops = np.zeros(shape)
        for flat in range(drops.size):
            gates = torch.ones(shape)
            gates.view(-1)[flat] = 0.0
            drops.flat[flat] = full - accuracy(model, data, gates)
        grads = gradient_scores(model, data, shape)
        entropy = entropy_per_head(model, data, min(64, len(data.inputs["test"])))
        orders = {
            "gradient score": list(np.argsort(grads, axis=None)),
            "masking drop": list(np.argsort(drops, axis=None)),
            "random": list(np.random.default_rng(options.seed).permutation(drops.size)),
        }
        curves = {name: prune_curve(model, data, order, shape) for name, order in orders.items()}
        cost = attention_cost(QUICK_LENGTHS if options.quick else LENGTHS)
        exponents = {
            f"{name}_{unit}": exponent(cost, f"{name}_{unit}")
            for name in ("scratch", "sdpa")
            for unit in ("ms", "mib")
        }
        with mlflow.start_run(run_name="head importance", nested=True):
            for layer, head in np.ndindex(shape):
                tag = f"l{layer}h{head}"
                mlflow.log_metrics(
                    {
                        f"mask_drop_{tag}": drops[layer, head],
                        f"grad_score_{tag}": grads[layer, head],
                        f"entropy_{tag}": entropy["entropy"][layer, head],
                    }
                )
            for name, curve in curves.items():
                key = "prune_accuracy_" + name.replace(" ", "_")
                for kept, value in zip(range(drops.size, 0, -1), curve, strict=False):
                    mlflow.log_metric(key, value, step=kept)
        with mlflow.start_run(run_name="attention cost", nested=True):
            for row in cost:
                metrics = {k: v for k, v in row.items() if k != "length"}
                mlflow.log_metrics(metrics, step=int(row["length"]))
            mlflow.log_metrics({f"{k}_exponent": v for k, v in exponents.items()})
        mlflow.log_metrics(
            {"test_accuracy": full, **{f"{k}_exponent": v for k, v in exponents.items()}}
        )
        plots(curves, drops.size, cost, entropy["normalized"])
        report = render(full, drops, grads, entropy, curves, cost, exponents)
        write_report(options.out, "attention.md", report)
    return 0


def plots(curves: dict, heads: int, cost: list[dict], normalized: np.ndarray) -> None:
    kept = list(range(heads, 0, -1))
    textlab.line_plot(
        {k: (kept[: len(v)], v) for k, v in curves.items()},
        "heads kept",
        "test accuracy",
        "plots/pruning.png",
    )
    lengths = [r["length"] for r in cost]
    series = {name: (lengths, [r[f"{name}_ms"] for r in cost]) for name in ("scratch", "sdpa")}
    textlab.line_plot(series, "sequence length", "ms per call", "plots/attention_time.png", True)
    memory = {
        name: (lengths, [max(r[f"{name}_mib"], 1e-3) for r in cost]) for name in ("scratch", "sdpa")
    }
    textlab.line_plot(
        memory, "sequence length", "MiB allocated per call", "plots/attention_memory.png", True
    )
    from matplotlib.figure import Figure

    from training import tracking

    fig = Figure(figsize=(1.5 + normalized.shape[1], 1.2 + normalized.shape[0]))
    ax = fig.add_subplot()
    image = ax.imshow(normalized, vmin=0, vmax=1, cmap="viridis")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("entropy / log(tokens)")
    fig.colorbar(image)
    tracking.log_figure(fig, "plots/entropy.png")


def render(full, drops, grads, entropy, curves, cost, exponents) -> str:
    heads = [
        [
            f"{layer}",
            f"{head}",
            f"{drops[layer, head]:+.3f}",
            f"{grads[layer, head]:.3g}",
            f"{entropy['entropy'][layer, head]:.2f}",
            f"{entropy['normalized'][layer, head]:.2f}",
            f"{entropy['peak'][layer, head]:.2f}",
        ]
        for layer, head in np.ndindex(drops.shape)
    ]
    total = drops.size
    pruning = [
        [str(total - i), *(f"{curves[name][i]:.3f}" for name in curves)]
        for i in range(len(next(iter(curves.values()))))
    ]
    timing = [
        [
            str(r["length"]),
            f"{r['scratch_ms']:.3f}",
            f"{r['sdpa_ms']:.3f}",
            f"{r['scratch_mib']:.2f}",
            f"{r['sdpa_mib']:.2f}",
        ]
        for r in cost
    ]
    return (
        f"# Attention heads and cost\n\nTest accuracy with every head: **{full:.3f}**.\n\n"
        + markdown_table(
            [
                "layer",
                "head",
                "accuracy drop when masked",
                "gradient score",
                "entropy (nats)",
                "entropy / log n",
                "peak weight",
            ],
            heads,
        )
        + "\n## Accuracy as heads are pruned (least important first)\n\n"
        + markdown_table(["heads kept", *curves], pruning)
        + "\n## Attention cost against sequence length (1 x 4 heads x 32 dims, float32)\n\n"
        + markdown_table(["n", "scratch ms", "sdpa ms", "scratch MiB", "sdpa MiB"], timing)
        + f"\nFitted exponent k of cost ~ n^k over the {FIT_FROM} longest lengths: time, "
        f"scratch **{exponents['scratch_ms']:.2f}** and sdpa **{exponents['sdpa_ms']:.2f}** "
        "(both compute every score); memory, scratch "
        f"**{exponents['scratch_mib']:.2f}** and sdpa **{exponents['sdpa_mib']:.2f}** "
        "(sdpa never holds the n x n matrix).\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
