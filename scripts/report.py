#!/usr/bin/env python3
"""Write the QA report of one or more decision logs: one self-contained HTML page.

    .venv/bin/python scripts/report.py routing.jsonl -o report.html
    .venv/bin/python scripts/report.py route.jsonl audit.jsonl \\
        --label "route mode" --label "audit mode, kernel 0.131.0" \\
        --options control_plane=https://api.onkernel.com --options 2:mode=audit

The log holds no line with the proxy's options: the report infers what it can from the
records and says so; `--options [N:]name=value` states one (for every log, or for the Nth).
The same page comes from mitmproxy's command bar: `:browserrouting.report PATH`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from addon.report import OPTIONS, LogSource, write_report  # noqa: E402

__all__ = ["LogSource", "main", "write_report"]


def parse_options(values: list[str], logs: int) -> list[dict[str, str]]:
    """`[N:]name=value` entries, as one dict of options per log; ValueError names a bad one."""
    per_log: list[dict[str, str]] = [{} for _ in range(logs)]
    for entry in values:
        name, eq, value = entry.partition("=")
        index, colon, name = name.rpartition(":")
        short = name.strip().removeprefix("browserrouting_")
        if not eq or short not in OPTIONS:
            raise ValueError(
                f"--options {entry!r}: expected [N:]name=value, name one of {', '.join(OPTIONS)}"
            )
        if colon and not (index.isdigit() and 1 <= int(index) <= logs):
            raise ValueError(f"--options {entry!r}: N must be the number of a log given, 1 to {logs}")
        for number, options in enumerate(per_log, 1):
            if not colon or int(index) == number:
                options[short] = value
    return per_log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/report.py",
        description="Write one self-contained HTML page (no network, no script) that tells what a "
        "routing or audit run did, from its browserrouting_log decision logs.",
    )
    parser.add_argument(
        "logs", nargs="+", metavar="LOG", help="a JSON-lines decision log (browserrouting_log)"
    )
    parser.add_argument(
        "-o", "--output", default="report.html", help="the page to write (default: report.html)"
    )
    parser.add_argument("--title", default="", help="the page's title")
    parser.add_argument(
        "--label", action="append", default=[], help="what a log is, in the order of the logs (repeatable)"
    )
    parser.add_argument(
        "--options",
        action="append",
        default=[],
        metavar="[N:]NAME=VALUE",
        help=f"an option the run had ({', '.join(OPTIONS)}), for every log or the Nth (repeatable)",
    )
    args = parser.parse_args(argv)
    if len(args.label) > len(args.logs):
        parser.error(f"{len(args.label)} labels for {len(args.logs)} logs")
    try:
        options = parse_options(args.options, len(args.logs))
    except ValueError as e:
        parser.error(str(e))
    labels = args.label + [""] * (len(args.logs) - len(args.label))
    sources = [
        LogSource(log, label, opts) for log, label, opts in zip(args.logs, labels, options, strict=True)
    ]
    try:
        written = write_report(sources, args.output, args.title)
    except OSError as e:
        print(f"scripts/report.py: {e}", file=sys.stderr)
        return 2
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
