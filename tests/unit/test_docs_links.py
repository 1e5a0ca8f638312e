"""README.md and docs/ stay true: every relative link resolves, and every `make` target and
`modelplane` subcommand they show in code exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"```.*?```|`[^`\n]+`", re.DOTALL)


def code_of(page: Path) -> str:
    return "\n".join(span.strip("`") for span in CODE.findall(page.read_text()))


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z0-9][a-z0-9-]*):", (ROOT / "Makefile").read_text(), re.M))


def test_the_pages_exist() -> None:
    assert len(PAGES) > 5


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL, or an anchor on the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.name}: links to nothing: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_make_targets_and_subcommands_exist(page: Path) -> None:
    from modelplane.cli import main

    code = code_of(page)
    targets = set(re.findall(r"\bmake ([a-z][a-z0-9-]*)", code))
    unknown_targets = targets - make_targets()
    assert not unknown_targets, f"{page.name}: no such make target(s): {sorted(unknown_targets)}"
    # in command position: a line's start (after a `$ ` prompt), or after && ; |
    command = r"(?:^|&&|;|\|)[ \t]*(?:\$[ \t]*)?modelplane ([a-z][a-z-]*)"
    commands = set(re.findall(command, code, re.M))
    unknown_commands = commands - set(main.commands)
    assert not unknown_commands, f"{page.name}: no such subcommand(s): {sorted(unknown_commands)}"
