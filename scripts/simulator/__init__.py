"""Local simulator of the Kernel control plane (CP) and a browser VM proxy, on loopback only,
with fault controls and per-side request records.

Tests need to see *where* traffic went (CP vs. VM), with what headers, and how the addon copes
with dead sessions, faults, latency and streams, without any network access. The CP is plain
HTTP (HTTPS with `cp_tls=True`, `--cp-tls`); the VM proxy is HTTPS with a leaf from a throwaway
CA whose certificate (`cert_path`) clients trust. Both record every request for later assertions.

For a deleted (or VM-killed) browser the VM answers `404 browser_gone`, as the reference
describes, or with `deleted_browser="502"` (`--deleted-browser 502`) a `502 bad_gateway`, as
the live VM proxy does today.

Built on aiohttp's server and client, and trustme for the certificates. Usable as a module
(`from simulator import Simulator`, with scripts/ on sys.path) or a command line
(`python scripts/simulator --help`).

Modules: server (the `Simulator` class and its loop), cp (the control plane), vm (the VM
proxy), control (faults, latency and the `/_sim/*` controls), state (browsers, settings,
request records), exchange (one request on aiohttp), shapes (Kernel's answers), cli.
"""

from typing import TYPE_CHECKING, Any

from .shapes import (
    BAD_GATEWAY_BODY,
    CP_EVENT_COUNT,
    DELETED_BROWSER_ANSWERS,
    GONE_BODY,
    VM_EVENT_COUNT,
    VM_PREFIX,
    file_bytes,
)
from .shapes import file_bytes as _file_bytes  # the name scripts/soak.py imports

if TYPE_CHECKING:
    from .cli import main
    from .server import Simulator


def __getattr__(name: str) -> Any:
    """`Simulator` and `main` load aiohttp and trustme when first used: `--help` stays instant."""
    if name == "Simulator":
        from .server import Simulator

        return Simulator
    if name == "main":
        from .cli import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BAD_GATEWAY_BODY",
    "CP_EVENT_COUNT",
    "DELETED_BROWSER_ANSWERS",
    "GONE_BODY",
    "VM_EVENT_COUNT",
    "VM_PREFIX",
    "Simulator",
    "_file_bytes",
    "file_bytes",
    "main",
]
