"""What the simulated Kernel answers look like: browser objects, telemetry events, offset
pages, file contents and the VM's bodies for a deleted browser, as the SDKs read them."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote

GONE_BODY = b'{"code":"browser_gone","message":"browser not found"}'
BAD_GATEWAY_BODY = b'{"code":"bad_gateway","message":"browser unavailable"}'
DELETED_BROWSER_ANSWERS = ("gone", "502")  # what the VM answers for a deleted or killed browser
VM_PREFIX = "/browser/kernel"
CP_EVENT_COUNT = 5  # historical events the CP holds per browser
VM_EVENT_COUNT = 5  # events the VM's own /telemetry/events page holds
_JWT_RE = re.compile(r"(jwt=)([^&\s]*)")


@dataclass
class Session:
    """One browser as the CP knows it."""

    session_id: str
    jwt: str
    name: str | None
    pool: str | None
    created_at: str


def redact(text: str) -> str:
    """Keep only the first 6 characters of any jwt query value (log hygiene)."""
    return _JWT_RE.sub(lambda m: m.group(1) + m.group(2)[:6] + "...", text)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def browser_obj(s: Session, vm_netloc: str) -> dict[str, Any]:
    """A browser as BrowserCreateResponse / BrowserListResponse / BrowserRetrieveResponse read it."""
    enc = quote(s.jwt, safe="")
    obj: dict[str, Any] = {
        "session_id": s.session_id,
        "created_at": s.created_at,
        "cdp_ws_url": f"wss://{vm_netloc}/browser/cdp?jwt={enc}",
        "webdriver_ws_url": f"wss://{vm_netloc}/browser/webdriver?jwt={enc}",
        "browser_live_view_url": f"https://{vm_netloc}/browser/live?jwt={enc}",
        "base_url": f"https://{vm_netloc}{VM_PREFIX}",
        "headless": False,
        "stealth": False,
        "gpu": False,
        "kiosk_mode": False,
        "memory": "8GiB",
        "region": "us-east",
        "timeout_seconds": 60,
    }
    if s.name is not None:
        obj["name"] = s.name
    if s.pool is not None:
        obj["pool"] = {"id": "pool_" + sha256(s.pool.encode())[:16], "name": s.pool}
    return obj


def event(session_id: str, seq: int, origin: str) -> dict[str, Any]:
    """A TelemetryEventsResponse envelope; `source`/`id` (extra fields) tell CP from VM."""
    prefix = "cp" if origin == "control_plane" else "vm"
    text = f"{prefix} event {seq}"
    return {
        "seq": seq,
        "id": f"{prefix}-{session_id}-{seq}",
        "source": origin,
        "event": {
            "category": "console",
            "type": "console_log",
            "ts": int(time.time() * 1_000_000),
            "source": {
                "kind": "cdp",
                "event": "Runtime.consoleAPICalled",
                "metadata": {"sim_origin": origin},
            },
            "data": {"level": "log", "text": text, "args": [text]},
        },
    }


def events(session_id: str, origin: str) -> list[dict[str, Any]]:
    """The events page a browser holds: the CP's history ("control_plane") or the VM's ("vm")."""
    count = CP_EVENT_COUNT if origin == "control_plane" else VM_EVENT_COUNT
    return [event(session_id, seq, origin) for seq in range(1, count + 1)]


def page(items: list[dict[str, Any]], query: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Offset page as SyncOffsetPagination reads it: JSON array + X-Has-More/X-Next-Offset.

    X-Next-Offset is the next page's start, or 0 on the last page (the SDK's stop sentinel).
    Raises ValueError for a bad offset or limit.
    """
    qs = parse_qs(query)
    try:
        offset = int((qs.get("offset") or ["0"])[0])
        limit = int((qs.get("limit") or ["20"])[0])
    except ValueError as exc:
        raise ValueError("offset and limit must be integers") from exc
    if offset < 0 or limit < 1:
        raise ValueError("offset must be >= 0 and limit >= 1")
    limit = min(limit, 100)
    items_page = items[offset : offset + limit]
    nxt = offset + len(items_page)
    more = nxt < len(items)
    return items_page, {"X-Has-More": "true" if more else "false", "X-Next-Offset": str(nxt if more else 0)}


def file_bytes(path: str) -> bytes:
    """A file's contents: deterministic, with every byte value so binary mangling is detectable."""
    return f"simulated file {path}\n".encode() + bytes(range(256))
