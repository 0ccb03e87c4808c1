"""`python scripts/bench [--quick] [--help]` (or `python -m bench` with scripts/ on sys.path):
the bench's command line."""

import sys
from pathlib import Path

if not __package__:  # run as a directory: import the package by name, not its modules as top-level
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.cli import main

sys.exit(main())
