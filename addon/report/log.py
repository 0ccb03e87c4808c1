"""The QA report's reading of decision logs: one `Run` per log, the decisions a log holds, and
the accessors of a record's fields that the report's other parts share. Pure, no mitmproxy import.

The log has one line per flow when its decision is final and one per cache change; a record
updated after its flow ended (an audit's `missing_fallback`) is logged again: the last line of a
flow wins, placed where its flow first ended.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..decisions import Decision

Record = dict[str, Any]

OPTIONS = {  # the options that matter, as the header names them
    "mode": "mode",
    "control_plane": "CP origins",
    "subresources": "allowlist",
    "fallback": "fallback registry",
    "vm_hosts": "VM hosts",
    "audit_window": "audit window (ms)",
    "inject": "fault injection",
}


def option_values(options: Mapping[str, object] | None) -> dict[str, str]:
    """The options that matter, by short name; `browserrouting_` prefixes are accepted."""
    found = {}
    for name, value in (options or {}).items():
        short = name.removeprefix("browserrouting_")
        if short in OPTIONS and value is not None:
            found[short] = str(value)
    return found


@dataclass
class Run:
    """One decision log: its flows (the last record of each) and its cache changes."""

    name: str
    label: str = ""
    options: dict[str, str] = field(default_factory=dict)  # given, not inferred
    flows: dict[str, Record] = field(default_factory=dict)  # flow id -> its last record
    placed: dict[str, float] = field(default_factory=dict)  # flow id -> ts of its first line
    relogged: dict[str, float] = field(default_factory=dict)  # flow id -> ts of its last line
    cache: list[Record] = field(default_factory=list)
    skipped: int = 0  # lines that are no record
    logged_at: dict[str, float] = field(default_factory=dict)  # fallbacks placed at their VM answer
    _last_ts: float = 0.0

    def add(self, line: str) -> None:
        if not line.strip():
            return
        try:
            record = json.loads(line)
        except ValueError:
            self.skipped += 1
            return
        if not isinstance(record, dict) or not isinstance(record.get("decision"), str):
            self.skipped += 1
            return
        ts = record.get("ts")
        if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts):
            self._last_ts = float(ts)
        record["ts"] = self._last_ts
        if record["decision"].startswith("route_"):
            self.cache.append(record)
            return
        key = record.get("flow_id")
        key = key if isinstance(key, str) and key else f"line-{len(self.flows) + len(self.cache)}"
        if key in self.flows:
            self.relogged[key] = self._last_ts
            self.flows[key] = record
        else:
            self.flows[key] = record
            self.placed[key] = self._last_ts

    def finish(self) -> None:
        """A fallback's record is logged when the client has the CP's answer, after its re-issue;
        its VM answered when the route was evicted (browser_gone): the mark goes there, so that
        the link runs forward in time, from the VM's answer to the re-issue."""
        answered = {
            str(c["flow_id"]): c["ts"]
            for c in self.cache
            if c["decision"] == Decision.ROUTE_EVICTED
            and c.get("reason") == "browser_gone"
            and c.get("flow_id")
        }
        for flow_id, record in self.flows.items():
            if (
                record["decision"] == Decision.FALLBACK
                and flow_id in answered
                and flow_id not in self.logged_at
            ):
                self.logged_at[flow_id] = self.placed[flow_id]
                self.placed[flow_id] = min(answered[flow_id], self.placed[flow_id])


def read_run(
    lines: Iterable[str], name: str, label: str = "", options: Mapping[str, object] | None = None
) -> Run:
    run = Run(name=name, label=label, options=option_values(options))
    for line in lines:
        run.add(line)
    run.finish()
    return run


def load_run(path: str | Path, label: str = "", options: Mapping[str, object] | None = None) -> Run:
    """A decision log from a file (OSError when it cannot be read)."""
    path = Path(path).expanduser()
    with path.open(encoding="utf-8", errors="backslashreplace") as lines:
        return read_run(lines, path.name, label, options)


# -- a record's fields ------------------------------------------------------------------------


def session_of(record: Record) -> str | None:
    """The record's session; a flow with none (a create) takes the one session it cached."""
    session = record.get("session_id")
    if isinstance(session, str) and session:
        return session
    changes = record.get("cache")
    if isinstance(changes, list):
        found = {c.get("session_id") for c in changes if isinstance(c, dict)}
        if len(found) == 1 and isinstance(only := found.pop(), str) and only:
            return only
    return None


def violations_of(record: Record) -> list[str]:
    found = record.get("violations")
    return [str(v) for v in found] if isinstance(found, list) else []


def notes_of(record: Record) -> list[str]:
    found = record.get("notes")
    return [str(v) for v in found] if isinstance(found, list) else []


def host_of(url: object) -> str | None:
    """`host:port` as mitmproxy counts outbound requests, or None."""
    if not isinstance(url, str):
        return None
    scheme, sep, rest = url.partition("://")
    netloc = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    return _host(scheme, netloc) if sep else None


@functools.lru_cache(maxsize=4096)
def _host(scheme: str, netloc: str) -> str | None:
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    except ValueError:
        return None
    return f"{parts.hostname}:{port}" if parts.hostname and port else None


def origin_of(url: object) -> str | None:
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None
    except ValueError:
        return None


def path_of(url: object) -> str:
    """The path of a URL, without query and fragment (no parsing beyond that: it runs per flow)."""
    if not isinstance(url, str):
        return ""
    _, sep, rest = url.partition("://")
    if sep:
        slash = rest.find("/")
        rest = rest[slash:] if slash >= 0 else ""
    return rest.split("?", 1)[0].split("#", 1)[0]
