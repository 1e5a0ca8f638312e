"""Course studies: each a command that trains small models side by side and reports.

`modelplane study <name>` (or `python -m training.studies <name>`) runs one. A study logs
one MLflow parent run with a child run per setting, writes a markdown table and plots, and
finishes in bounded time on 2 cores by default (each module says its figure); `--quick`
shrinks it to seconds for the tests. It registers nothing: studies measure, jobs ship.

STUDIES maps a study's name to its module, which has `main(argv: list[str] | None) -> int`
and a one-line docstring summary that `modelplane study --help` shows.
"""

from __future__ import annotations

STUDIES: dict[str, str] = {
    "backbones": "training.studies.backbones",
    "curriculum": "training.studies.curriculum",
    "attention": "training.studies.attention",
    "normalization": "training.studies.normalization",
    "decoding": "training.studies.decoding",
    "tricks": "training.studies.tricks",
}
