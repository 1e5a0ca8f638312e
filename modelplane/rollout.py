"""`modelplane rollout`: the gate that promotes a challenger or rolls it back (docs/rollouts.md).

It watches the per-version metrics every replica exports (`modelplane_model_requests_total`,
`modelplane_model_latency_seconds`, `modelplane_shadow_agreement`), read from Prometheus
(`--prometheus`, the replicas summed by PromQL) or scraped from the replicas themselves
(`--metrics-url`, one per replica, summed here). Once the challenger has answered
`--min-canary` requests and been compared on `--min-shadow` shadowed ones, it compares it with
production (error-rate difference, p95 latency ratio, mean agreement) against the thresholds,
then either moves the production alias to the challenger's version (promote) or removes the
challenger alias (roll back); the services follow the aliases. The decision, its figures and
its thresholds are written as tags on the challenger's model version and as one JSON line on
stdout. Exit status: 0 promoted, 3 rolled back, 2 nothing to decide or a bad argument.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger("modelplane.rollout")

PROMOTED, ROLLED_BACK = "promoted", "rolled_back"
EXIT = {PROMOTED: 0, ROLLED_BACK: 3}
TAG = "rollout"


@dataclass(frozen=True)
class Thresholds:
    """What a challenger must show before it is promoted (the defaults are documented)."""

    min_canary: int = 200  # requests the challenger answered (canary); 0: not needed
    min_shadow: int = 200  # shadowed requests compared with production; 0: not needed
    max_error_rate_diff: float = 0.01  # challenger error rate minus production's
    max_p95_ratio: float = 1.5  # challenger p95 latency over production's
    min_agreement: float = 0.9  # mean agreement of shadowed answers (0..1)


@dataclass
class Side:
    """One version's counts: requests by outcome, latency buckets (le -> cumulative count)."""

    ok: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.ok + self.errors

    @property
    def error_rate(self) -> float:
        return self.errors / self.total if self.total else 0.0

    def p95(self) -> float:
        return quantile(0.95, self.buckets)


@dataclass
class Evidence:
    """What the metrics say of production, the challenger (canary), and shadowing."""

    production: Side
    canary: Side
    shadow: Side
    agreement_sum: float = 0.0
    agreement_count: float = 0.0

    @property
    def agreement(self) -> float:
        return self.agreement_sum / self.agreement_count if self.agreement_count else math.nan


def quantile(q: float, buckets: dict[float, float]) -> float:
    """The q-quantile of a cumulative histogram ({le: count}), interpolated within its
    bucket as PromQL's histogram_quantile does; NaN when empty."""
    edges = sorted(buckets)
    if not edges or buckets[edges[-1]] <= 0:
        return math.nan
    rank = q * buckets[edges[-1]]
    lower_edge, lower_count = 0.0, 0.0
    for edge in edges:
        count = buckets[edge]
        if count >= rank:
            if math.isinf(edge):
                return lower_edge  # in the +Inf bucket: the highest finite edge
            width = count - lower_count
            share = (rank - lower_count) / width if width > 0 else 0.0
            return lower_edge + (edge - lower_edge) * share
        lower_edge, lower_count = edge, count
    return lower_edge


# ---- reading the metrics ---------------------------------------------------------------------
Sample = tuple[str, dict[str, str], float]  # metric name, labels, value


def scraped_samples(urls: Iterable[str], timeout_s: float = 5.0) -> list[Sample]:
    """Every sample of every replica's /metrics (text format), replicas concatenated."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: list[Sample] = []
    for url in urls:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            text = answer.read().decode()
        for family in text_string_to_metric_families(text):
            samples += [(s.name, dict(s.labels), float(s.value)) for s in family.samples]
    return samples


def prometheus_samples(
    base: str, service: str, model: str, timeout_s: float = 10.0
) -> list[Sample]:
    """The same samples from a Prometheus server, every replica summed by PromQL."""
    selector = f'service="{service}",model="{model}"'
    queries = {
        "modelplane_model_requests_total": "version, role, outcome",
        "modelplane_model_latency_seconds_bucket": "version, role, le",
        "modelplane_shadow_agreement_sum": "version",
        "modelplane_shadow_agreement_count": "version",
    }
    samples: list[Sample] = []
    for metric, by in queries.items():
        expr = f"sum by ({by}) ({metric}{{{selector}}})"
        url = f"{base.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            body = json.load(answer)
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {expr!r}: {body}")
        for result in body["data"]["result"]:
            labels = {**result["metric"], "service": service, "model": model}
            samples.append((metric, labels, float(result["value"][1])))
    return samples


def evidence(
    samples: list[Sample], service: str, model: str, production: str, challenger: str
) -> Evidence:
    """Sum the samples of one service's model into production, canary and shadow sides."""
    sides = {
        (production, "production"): Side(),
        (challenger, "challenger"): Side(),
        (challenger, "shadow"): Side(),
    }
    buckets: dict[tuple[str, str], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    found = Evidence(
        sides[(production, "production")],
        sides[(challenger, "challenger")],
        sides[(challenger, "shadow")],
    )
    for name, labels, value in samples:
        if labels.get("service") != service or labels.get("model") != model:
            continue
        key = (labels.get("version", ""), labels.get("role", ""))
        if name == "modelplane_model_requests_total" and key in sides:
            if labels.get("outcome") == "ok":
                sides[key].ok += value
            else:
                sides[key].errors += value
        elif name == "modelplane_model_latency_seconds_bucket" and key in sides:
            buckets[key][float(labels["le"])] += value
        elif labels.get("version") == challenger and name == "modelplane_shadow_agreement_sum":
            found.agreement_sum += value
        elif labels.get("version") == challenger and name == "modelplane_shadow_agreement_count":
            found.agreement_count += value
    for key, side in sides.items():
        side.buckets = dict(buckets.get(key, {}))
    return found


# ---- deciding --------------------------------------------------------------------------------
def enough(found: Evidence, limits: Thresholds) -> bool:
    return found.canary.total >= limits.min_canary and found.agreement_count >= limits.min_shadow


def decide(found: Evidence, limits: Thresholds) -> tuple[str, list[str], dict[str, Any]]:
    """(decision, the reasons against promoting, the figures compared)."""
    challenger = found.canary if found.canary.total else found.shadow
    if found.canary.total < limits.min_canary and found.shadow.total:
        challenger = found.shadow  # little canary traffic: the shadow runs' latency instead
    figures = {
        "production_requests": found.production.total,
        "canary_requests": found.canary.total,
        "shadow_compared": found.agreement_count,
        "production_error_rate": round(found.production.error_rate, 6),
        "challenger_error_rate": round(
            (found.canary.errors + found.shadow.errors)
            / max(1.0, found.canary.total + found.shadow.total),
            6,
        ),
        "production_p95_s": found.production.p95(),
        "challenger_p95_s": challenger.p95(),
        "agreement": found.agreement,
    }
    figures["error_rate_diff"] = round(
        figures["challenger_error_rate"] - figures["production_error_rate"], 6
    )
    ratio = (
        figures["challenger_p95_s"] / figures["production_p95_s"]
        if figures["production_p95_s"]
        else math.nan
    )
    figures["p95_ratio"] = ratio
    reasons = []
    if not enough(found, limits):
        reasons.append(
            f"not enough evidence: {found.canary.total:.0f}/{limits.min_canary} canary requests, "
            f"{found.agreement_count:.0f}/{limits.min_shadow} shadow comparisons"
        )
    if figures["error_rate_diff"] > limits.max_error_rate_diff:
        reasons.append(
            f"error rate {figures['challenger_error_rate']:.4f} vs production "
            f"{figures['production_error_rate']:.4f} (allowed +{limits.max_error_rate_diff})"
        )
    if not math.isnan(ratio) and ratio > limits.max_p95_ratio:
        reasons.append(f"p95 latency {ratio:.2f}x production's (allowed {limits.max_p95_ratio}x)")
    if limits.min_shadow and not found.agreement >= limits.min_agreement:  # NaN fails too
        reasons.append(
            f"agreement {found.agreement:.3f} with production (needs {limits.min_agreement})"
        )
    for key in ("production_p95_s", "challenger_p95_s", "agreement", "p95_ratio"):
        value = figures[key]
        figures[key] = None if math.isnan(value) else round(value, 6)
    return (ROLLED_BACK if reasons else PROMOTED), reasons, figures


# ---- the registry ----------------------------------------------------------------------------
class Registry:
    """The aliases and tags the gate reads and writes (MLflow's client)."""

    def __init__(self, tracking_uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def version(self, name: str, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") in (
                "RESOURCE_DOES_NOT_EXIST",
                "INVALID_PARAMETER_VALUE",
            ):
                return None
            raise

    def apply(
        self, name: str, decision: str, version: str, production: str, challenger: str
    ) -> None:
        """Promote: production -> the challenger's version, then drop the challenger alias (a
        service polling between the two sees both name one version: no extra load). Roll
        back: drop the challenger alias."""
        if decision == PROMOTED:
            self.client.set_registered_model_alias(name, production, version)
        self.client.delete_registered_model_alias(name, challenger)

    def tag(self, name: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, version, key, value)


def watch(
    read: Callable[[], Evidence], limits: Thresholds, timeout_s: float, poll_s: float
) -> Evidence:
    """Read the metrics until there is enough evidence or `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = read()
        log.info(
            "evidence: %d canary requests, %d shadow comparisons (need %d, %d)",
            found.canary.total,
            found.agreement_count,
            limits.min_canary,
            limits.min_shadow,
        )
        if enough(found, limits) or time.monotonic() >= deadline:
            return found
        time.sleep(poll_s)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("min_canary", "min_shadow"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    if not 0 <= args.min_agreement <= 1:
        parser.error("--min-agreement must be between 0 and 1")
    if args.max_p95_ratio <= 0:
        parser.error("--max-p95-ratio must be > 0")
    if args.production_alias == args.challenger_alias:
        parser.error("--production-alias and --challenger-alias must differ")
    return args


def build_parser() -> argparse.ArgumentParser:
    """The gate's options (`modelplane rollout --help` prints them)."""
    defaults = Thresholds()
    parser = argparse.ArgumentParser(
        prog="modelplane rollout", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--name", required=True, help="registered model name (MLflow)")
    parser.add_argument(
        "--service", required=True, help="service label of the metrics (classify, ...)"
    )
    parser.add_argument(
        "--model", default="", help="model label (the service's model key; default: --service)"
    )
    parser.add_argument("--tracking-uri", default="http://127.0.0.1:5000")
    parser.add_argument("--production-alias", default="production")
    parser.add_argument("--challenger-alias", default="challenger")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prometheus", help="Prometheus base URL (replicas summed by PromQL)")
    source.add_argument(
        "--metrics-url", action="append", help="a replica's /metrics URL (repeat per replica)"
    )
    parser.add_argument("--min-canary", type=int, default=defaults.min_canary)
    parser.add_argument("--min-shadow", type=int, default=defaults.min_shadow)
    parser.add_argument("--max-error-rate-diff", type=float, default=defaults.max_error_rate_diff)
    parser.add_argument("--max-p95-ratio", type=float, default=defaults.max_p95_ratio)
    parser.add_argument("--min-agreement", type=float, default=defaults.min_agreement)
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for evidence; then roll back"
    )
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between metric reads")
    parser.add_argument("--dry-run", action="store_true", help="decide and print; change nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s rollout %(message)s", stream=sys.stderr
    )
    args = parse_args(argv)
    limits = Thresholds(
        args.min_canary,
        args.min_shadow,
        args.max_error_rate_diff,
        args.max_p95_ratio,
        args.min_agreement,
    )
    model = args.model or args.service
    registry = Registry(args.tracking_uri)
    production = registry.version(args.name, args.production_alias)
    challenger = registry.version(args.name, args.challenger_alias)
    if production is None or challenger is None or production == challenger:
        print(
            f"nothing to decide: {args.name}@{args.production_alias} is {production}, "
            f"@{args.challenger_alias} is {challenger}",
            file=sys.stderr,
        )
        return 2

    def read() -> Evidence:
        if args.prometheus:
            samples = prometheus_samples(args.prometheus, args.service, model)
        else:
            samples = scraped_samples(args.metrics_url)
        return evidence(samples, args.service, model, production, challenger)

    log.info("watching %s: production %s, challenger %s", args.name, production, challenger)
    found = watch(read, limits, args.timeout, args.poll)
    decision, reasons, figures = decide(found, limits)
    record = {
        "name": args.name,
        "decision": decision,
        "challenger_version": challenger,
        "production_version": production,
        "reasons": reasons,
        "figures": figures,
        "thresholds": asdict(limits),
        "dry_run": args.dry_run,
    }
    print(json.dumps(record), flush=True)
    if args.dry_run:
        return EXIT[decision]
    registry.tag(
        args.name,
        challenger,
        {
            f"{TAG}.decision": decision,
            f"{TAG}.reason": "; ".join(reasons) or "every threshold met",
            f"{TAG}.figures": json.dumps(figures),
            f"{TAG}.thresholds": json.dumps(asdict(limits)),
            f"{TAG}.production_version": production,
            f"{TAG}.decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    registry.apply(args.name, decision, challenger, args.production_alias, args.challenger_alias)
    log.info("%s version %s (production was %s)", decision, challenger, production)
    return EXIT[decision]


if __name__ == "__main__":
    sys.exit(main())
