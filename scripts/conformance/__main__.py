"""`python scripts/conformance [--help]`: the conformance runner's command line (`scripts/conform`)."""

import sys
from pathlib import Path

if not __package__:  # run as a directory: scripts/ (mitmdump_runner, simulator) and the repo (addon)
    here = Path(__file__).resolve().parent
    sys.path[0] = str(here.parent)
    sys.path.insert(1, str(here.parent.parent))

from conformance.cli import main

sys.exit(main())
