"""python -m modelplane: the same as the `modelplane` command."""

import sys

from modelplane.cli import main

sys.exit(main())
