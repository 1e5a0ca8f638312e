"""python -m training.studies <name> [options]: run one study (training.studies.STUDIES)."""

from __future__ import annotations

import importlib
import sys

from training.studies import STUDIES


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in STUDIES:
        names = ", ".join(sorted(STUDIES)) or "none yet"
        print(f"usage: python -m training.studies <name> [options] ({names})", file=sys.stderr)
        return 2
    return importlib.import_module(STUDIES[args[0]]).main(args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
