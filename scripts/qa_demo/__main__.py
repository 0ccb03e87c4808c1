"""`python scripts/qa_demo [--help]` (or `python -m qa_demo` with scripts/ on sys.path): the
demo's command line, as `scripts/demo` runs it once .venv is set up."""

import sys
from pathlib import Path

if not __package__:  # run as a directory: import the package by name, not its modules as top-level
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from qa_demo.cli import main

sys.exit(main())
