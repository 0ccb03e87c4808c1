"""The simulator's command line: prints one JSON line (cp_url, vm_url, base_url, ca_cert)
once both sides listen, logs one line per request, and runs until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from types import FrameType

from .shapes import DELETED_BROWSER_ANSWERS

EPILOG = """\
When both sides listen it prints one JSON line: cp_url, vm_url, base_url, ca_cert.
Controls, on the control plane without auth (JSON in and out), e.g.
  curl -s -X POST $CP/_sim/kill -d '{"session": "<id or name>"}'
  POST /_sim/kill       {"session"}  the VM answers as for a deleted browser; the CP still knows it
  POST /_sim/deleted_browser {"answer": "gone"|"502"}  a deleted/killed browser's VM answer:
                        404 browser_gone, or 502 bad_gateway (the live VM proxy today)
  POST /_sim/fault      {"status": 502|503|504, "reset": bool, "path_contains", "side": vm|cp|both,
                         "times"}  (status null and reset false: clear)
  POST /_sim/latency    {"cp": s, "vm": s}
  POST /_sim/gzip_gone  {"enabled": bool}  browser_gone bodies gzip-encoded
  POST /_sim/hold       {"hold": bool}  SSE streams send one event, then wait; /_sim/release
  POST /_sim/create     {"name", "pool"}   GET /_sim/browsers
  GET  /_sim/stats      requests per side and per host, max in flight; POST /_sim/reset clears
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simulator",
        description="Simulate the Kernel control plane and a browser VM proxy, on loopback only.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("--cp-host", default="127.0.0.1")
    p.add_argument("--cp-port", type=int, default=0)
    p.add_argument("--vm-host", default="127.0.0.2")
    p.add_argument("--vm-port", type=int, default=0)
    p.add_argument("--sse-interval", type=float, default=0.2, help="seconds between SSE events")
    p.add_argument("--sse-count", type=int, default=3, help="events per SSE stream")
    p.add_argument("--cert-dir", default=None, help="where to write the VM's CA cert (default: temp dir)")
    p.add_argument(
        "--deleted-browser",
        choices=DELETED_BROWSER_ANSWERS,
        default="gone",
        help="the VM's answer for a deleted or killed browser: 404 browser_gone, or a 502 (default: gone)",
    )
    p.add_argument("--cp-tls", action="store_true", help="serve the CP over HTTPS too (the VM's CA)")
    p.add_argument("--quiet", action="store_true", help="do not log requests to stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .server import Simulator  # aiohttp and trustme: not needed for --help

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s sim %(message)s",
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    sim = Simulator(
        cp_host=args.cp_host,
        cp_port=args.cp_port,
        vm_host=args.vm_host,
        vm_port=args.vm_port,
        sse_interval=args.sse_interval,
        sse_count=args.sse_count,
        cert_dir=args.cert_dir,
        deleted_browser=args.deleted_browser,
        cp_tls=args.cp_tls,
    ).start()
    try:
        ready = {
            "cp_url": sim.cp_url,
            "vm_url": sim.vm_url,
            "base_url": sim.base_url,
            "ca_cert": sim.cert_path,
        }
        print(json.dumps(ready), flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
    return 0
