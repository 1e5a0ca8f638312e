"""python -m training.all train|export: every task's training job, or every export, in turn.

The one command of the compose `train`/`export` jobs and the Kubernetes Jobs; locally,
`make train-all` / `make export-all`. Each step is its own process (as when run by hand), its
output streams through, and the first failure stops the run with that step's exit status.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

STEPS: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "classify": ("training.classify",),
        "similarity": ("training.similarity",),
        "text-classify": ("training.text", "--task", "classify"),
        "text-generate": ("training.text", "--task", "generate"),
        "generate": ("training.generate",),
    },
    "export": {
        "classify": ("training.export", "classify"),
        "similarity": ("training.export", "similarity"),
        "text-classify": ("training.export", "text-classify"),
        "text-generate": ("training.export", "text-generate"),
        "generate": ("training.export", "generate"),
    },
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.all", description=__doc__)
    p.add_argument("stage", choices=tuple(STEPS))
    tasks = tuple(STEPS["train"])
    p.add_argument(
        "--only",
        type=lambda text: tuple(t.strip() for t in text.split(",") if t.strip()),
        default=tasks,
        help=f"comma-separated subset of {','.join(tasks)} (default: all, in that order)",
    )
    p.add_argument("--quick", action="store_true", help="pass --quick to every step")
    args = p.parse_args(argv)
    unknown = set(args.only) - set(tasks)
    if unknown:
        p.error(f"unknown task(s) {sorted(unknown)}; known: {', '.join(tasks)}")
    return args


def commands(stage: str, only: tuple[str, ...], quick: bool) -> list[tuple[str, list[str]]]:
    """(task, argv) per step, in the table's order."""
    extra = ["--quick"] if quick else []
    return [
        (task, [sys.executable, "-m", *step, *extra])
        for task, step in STEPS[stage].items()
        if task in only
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    steps = commands(args.stage, args.only, args.quick)
    for number, (task, cmd) in enumerate(steps, 1):
        print(f"[all] {args.stage} {number}/{len(steps)}: {task}: {' '.join(cmd[1:])}", flush=True)
        started = time.monotonic()
        status = subprocess.call(cmd)
        if status != 0:
            print(f"[all] {task} failed with exit status {status}; stopping", flush=True)
            return status
        print(f"[all] {task} done in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
