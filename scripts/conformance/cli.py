"""`scripts/conform`: the command line. Prints the matrix (cases x clients) and what each verdict
other than a pass says; writes JUnit, JSON and the HTML report when asked. Exit status 0 when no
case fails or errors, 1 otherwise (an interrupted run too), 2 on a usage or set-up error."""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from . import service
from .cases import ALLOWLIST, Case, catalog
from .clients import DEFAULT_CLIENTS, ROOT, Client, SetupError, prepare
from .judge import Expected, apply_expected, read_expected
from .junit import junit
from .outputs import as_json, details, matrix, summary, write
from .page import write_page
from .runner import ClientResult, run_client, slug
from .scrub import Scrubber

log = logging.getLogger("conform")

WINDOW_ENV = "KERNEL_CONFORM_AUDIT_WINDOW_MS"
# The SDKs re-issue a VM 401/403 through their retry backoff, up to about a second after the
# answer: the window must see it; a missing fallback is reported when it ends.
DEFAULT_WINDOW_MS = 1500

EPILOG = """\
clients: reference (the project's conforming client), python (the pinned kernel SDK),
python==VERSION (PyPI), python=PATH (a checkout or a wheel), node (the pinned @onkernel/sdk),
node@VERSION (npm), node=PATH (a built package folder or a tarball), cmd=COMMAND (any program
speaking the driver protocol). Default: reference python node. Versions and paths are installed
on first use into ~/.cache/kernel-conform (KERNEL_CONFORM_CACHE) and reused.

--live runs the cases against the real service (KERNEL_API_KEY; KERNEL_BASE_URL,
KERNEL_CONFORM_POOL, KERNEL_CONFORM_VM_HOSTS and KERNEL_CONFORM_UPSTREAM_CA optional) and deletes
every browser it created, also when interrupted. See docs/conform.md.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/conform",
        description="Judge clients that route Kernel browser calls by themselves, rule by rule, "
        "through mitmproxy in audit mode.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("clients", nargs="*", metavar="CLIENT", help="the clients to judge (see below)")
    p.add_argument(
        "--cases", default="*", metavar="GLOB", help="the cases to run: comma-separated globs of ids"
    )
    p.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML: a testsuite per client")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every verdict as JSON")
    p.add_argument("--html", type=Path, metavar="FILE", help="write the QA report page with the matrix")
    p.add_argument(
        "--expect", type=Path, metavar="FILE", help="known failures, `CLIENT CASE` a line: expected"
    )
    p.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="where to keep logs and repros (default: artifacts/conform/<time>)",
    )
    p.add_argument("--live", action="store_true", help="against the real service instead of the simulator")
    return p


def select(globs: str) -> list[Case]:
    patterns = [g.strip() for g in globs.split(",") if g.strip()]
    chosen = [c for c in catalog().values() if any(fnmatch.fnmatchcase(c.id, g) for g in patterns)]
    if not chosen:
        raise SetupError(f"no case matches --cases {globs!r} (ids: {', '.join(catalog())})")
    return chosen


def window_ms() -> int:
    value = os.environ.get(WINDOW_ENV, "").strip() or str(DEFAULT_WINDOW_MS)
    if not value.isdigit() or not 100 <= int(value) <= 60000:
        raise SetupError(f"{WINDOW_ENV}={value!r}: want milliseconds from 100 to 60000")
    return int(value)


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C


def folders(out: Path, clients: list[Client]) -> list[Path]:
    """A folder per client, named after it (numbered when two names come out the same)."""
    names = [slug(c.spec) for c in clients]
    return [out / (name if names.count(name) == 1 else f"{i}-{name}") for i, name in enumerate(names)]


def setup(args: argparse.Namespace) -> tuple[list[Case], list[Expected], int, str, list[Client]]:
    """Everything a run needs before its first case; SetupError, ValueError or OSError if not."""
    specs = list(args.clients) or list(DEFAULT_CLIENTS)
    if len(set(specs)) != len(specs):
        raise SetupError("a client is named twice")
    cases = select(args.cases)
    expected = read_expected(args.expect) if args.expect else []
    window = window_ms()
    api_key = service.live().api_key if args.live else service.SIM_API_KEY
    return cases, expected, window, api_key, [prepare(spec) for spec in specs]


def report(args: argparse.Namespace, results: list[ClientResult], cases: list[Case], meta: dict[str, object],
           scrub: Scrubber) -> int:  # fmt: skip
    """Print the matrix and what it says, write the files asked for; the exit status."""
    case_ids = [c.id for c in cases]
    print("\n".join(matrix(results, case_ids)))
    if notes := details(results, scrub):
        print("\n" + "\n".join(notes))
    print(f"\n{summary(results)} ({meta['seconds']} s)")
    failed = any(v.failed for r in results for v in r.verdicts) or any(r.left_behind for r in results)
    status = 1 if failed else 0
    written = {"junit": args.junit, "json": args.json, "html": args.html}
    try:
        if args.json:
            write(args.json, as_json(results, {**meta, "exit_status": status}, scrub))
        if args.junit:
            write(args.junit, junit(results, scrub))
        if args.html:
            write_page(results, case_ids, args.html, scrub)
    except OSError as e:
        print(f"scripts/conform: cannot write the results: {e}", file=sys.stderr)
        return 2
    print(f"results: {meta['results']}" + "".join(f"  {k}: {v}" for k, v in written.items() if v))
    return status


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="conform: %(message)s")
    for chatty in ("httpx", "kernel_simulator"):  # a line per request
        logging.getLogger(chatty).setLevel(logging.WARNING)
    out = args.keep or ROOT / "artifacts" / "conform" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        try:
            cases, expected, window, api_key, clients = setup(args)
            out.mkdir(parents=True, exist_ok=True)
        except (SetupError, ValueError, OSError) as e:
            print(f"scripts/conform: {e}", file=sys.stderr)
            return 2
        return run(args, cases, expected, window, clients, out, Scrubber(api_key))
    except KeyboardInterrupt:
        print("scripts/conform: interrupted (a run's browsers are deleted, or named above)", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace, cases: list[Case], expected: list[Expected], window: int,
        clients: list[Client], out: Path, scrub: Scrubber) -> int:  # fmt: skip
    """Every client in turn, then the report; KeyboardInterrupt on Ctrl-C or SIGTERM."""
    base_url = os.environ.get("KERNEL_BASE_URL") or service.LIVE_BASE_URL
    where = f"the live service at {base_url}" if args.live else "the simulator"
    log.info("%d cases x %d clients against %s; results in %s", len(cases), len(clients), where, out)
    started = time.monotonic()
    service_of = service.live if args.live else service.simulated
    results = [
        run_client(client, cases, service_of, folder, window)
        for client, folder in zip(clients, folders(out, clients), strict=True)
    ]
    for result in results:
        for entry in apply_expected(result.client.spec, result.verdicts, expected):
            log.warning("listed in --expect but passed (remove it): %s", entry)
    meta: dict[str, object] = {
        "service": where, "allowlist": ALLOWLIST, "audit_window_ms": window, "results": str(out),
        "seconds": round(time.monotonic() - started),
    }  # fmt: skip
    return report(args, results, cases, meta, scrub)
