"""`modelplane bench rollout`: what shadow traffic and a canary cost production's p50 at
concurrency 8.

Three classify processes serve the same bundle side by side from a verified cache holding it
as version 1 (@production) and version 2 (@challenger): no challenger (CHALLENGER_ALIAS empty),
every request shadowed (SHADOW_PERCENT=100), and a 20% canary. Each is driven in turn by an
httpx client at concurrency 8 for `--seconds`, in `--rounds` interleaved rounds (medians), so
a busy machine slows all three alike; then the shadow process's counters say how many shadows
were compared and how many were shed (production's queue was not empty, or too many ran).
The bundle is the registered classify model (`--model-uri`, from `--cache-dir`), or with
`--tiny` the tests' fitted 8x8 digit classifier, where the model's own time is smallest and
the overhead shows most.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np

from loadtests.bench_observe import digit_bodies, drive, side_by_side_arguments
from loadtests.bench_serve import served

CONFIGURATIONS = {
    "no challenger": {"CHALLENGER_ALIAS": ""},
    "shadow 100%": {"SHADOW_PERCENT": "100"},
    "canary 20%": {"CANARY_PERCENT": "20"},
}


def two_version_cache(bundle: Path, name: str, into: Path) -> None:
    """`bundle` as versions 1 (@production) and 2 (@challenger) of `name` in a model cache."""
    for version in ("1", "2"):
        shutil.copytree(bundle, into / name / version)
    (into / name / "aliases.json").write_text(json.dumps({"production": "1", "challenger": "2"}))


def cached_bundle(model_uri: str, cache_dir: Path) -> tuple[str, Path]:
    from shared.cache import ModelCache
    from shared.registry import ModelURI

    ref = ModelURI.parse(model_uri)
    version = ref.version or ModelCache(cache_dir).alias_version(ref.name, ref.alias or "")
    if version is None or not (cache_dir / ref.name / version).is_dir():
        raise SystemExit(
            f"{model_uri} is not in {cache_dir}: serve it once (make demo), or use --tiny"
        )
    return ref.name, cache_dir / ref.name / version


def counter(text: str, name: str, **labels: str) -> float:
    """The sum of a counter's samples whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def main(argv: list[str] | None = None) -> int:
    args = side_by_side_arguments("modelplane bench rollout", __doc__, argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.tiny:
            from tests.tinymodels import write_tiny_bundle

            name, bundle = "classify", write_tiny_bundle(work / "tiny", fitted=True)
        else:
            name, bundle = cached_bundle(args.model_uri, args.cache_dir)
        two_version_cache(bundle, name, work / "cache")
        env = {
            "MODEL_URI": f"models:/{name}@production",
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",  # nothing listens: the cache serves
            "MODEL_CACHE_DIR": str(work / "cache"),
            "ONNX_INTRA_OP_THREADS": str(args.threads),
            "LOG_LEVEL": "WARNING",
            "GRPC_PORT": "0",
        }
        print(
            f"classify ({'tiny bundle' if args.tiny else args.model_uri}), concurrency 8, "
            f"{args.rounds} round(s) of {args.seconds:g} s per configuration",
            flush=True,
        )
        return measure(env, digit_bodies(), work, args.seconds, args.rounds)


def measure(
    env: dict[str, str], bodies: list[bytes], work: Path, seconds: float, rounds: int
) -> int:
    results: dict[str, list[tuple[float, float, float]]] = {label: [] for label in CONFIGURATIONS}
    with ExitStack() as stack:
        urls = {}
        for label, extra in CONFIGURATIONS.items():
            print(f"  starting: {label}", flush=True)
            urls[label] = stack.enter_context(served({**env, **extra}, work, label)).url
            challenger = httpx.get(f"{urls[label]}/v1/model").json()["models"]["classify"]
            print(f"    challenger: {challenger.get('challenger', {}).get('version')}", flush=True)
        for url in urls.values():
            asyncio.run(drive(url, bodies, 1.0))  # warm up
        for round_ in range(rounds):
            for label, url in urls.items():
                latencies = asyncio.run(drive(url, bodies, seconds))
                p50, p99 = np.percentile(latencies, [50, 99])
                results[label].append((float(p50), float(p99), len(latencies) / seconds))
                print(f"  round {round_ + 1}: {label}: p50 {p50:.2f} ms", flush=True)
        shadow = httpx.get(f"{urls['shadow 100%']}/metrics").text
        canary = httpx.get(f"{urls['canary 20%']}/metrics").text
    base = statistics.median(r[0] for r in results["no challenger"])
    print("\n| configuration | p50 ms | p99 ms | RPS | p50 vs no challenger |")
    print("|---|---:|---:|---:|---:|")
    for label, rows in results.items():
        p50 = statistics.median(r[0] for r in rows)
        p99 = statistics.median(r[1] for r in rows)
        rps = statistics.median(r[2] for r in rows)
        print(f"| {label} | {p50:.2f} | {p99:.2f} | {rps:.0f} | {(p50 / base - 1) * 100:+.1f}% |")
    compared = counter(shadow, "modelplane_shadow_requests_total", outcome="compared")
    shed = counter(shadow, "modelplane_shadow_requests_total", outcome="shed")
    answered = counter(shadow, "modelplane_model_requests_total", role="production")
    print(
        f"\nshadow 100%: {compared:.0f} of {answered:.0f} production requests compared on the "
        f"challenger, {shed:.0f} shed ({shed / max(answered, 1) * 100:.0f}%)"
    )
    by_role = {
        role: counter(canary, "modelplane_model_requests_total", role=role)
        for role in ("production", "challenger")
    }
    share = by_role["challenger"] / max(1.0, sum(by_role.values()))
    print(f"canary 20%: the challenger answered {share * 100:.1f}% of {sum(by_role.values()):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
