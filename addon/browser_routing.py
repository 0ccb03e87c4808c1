"""mitmproxy entry point: `mitmdump -s addon/browser_routing.py`.

Kept thin: mitmproxy runs this file before registering it as a module, so the
classes live in the `addon` package, found from this file's own location.
"""

import sys
from pathlib import Path

_root = str(Path(__file__).resolve().parent.parent)
if _root not in sys.path:
    sys.path.insert(0, _root)

from addon.hooks import BrowserRouting  # noqa: E402

addons = [BrowserRouting.for_script()]
