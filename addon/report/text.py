"""How a record and a moment read on the QA report's page: secrets cut, times as offsets and
clocks, short labels, a decision's CSS class. Pure, no mitmproxy import.

Records are shown as logged (redacted); a jwt or a Bearer token that were somehow in clear are
cut here too.
"""

from __future__ import annotations

import datetime
import json
import re
from urllib.parse import unquote_plus

from ..decisions import ORDER
from ..route_cache import redact
from .log import Record

_JWT_PARAM = re.compile(r"((?:^|[?&\s\"'])jwt=)([^&\s\"'#]*)", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)([^\s\"',;]+)", re.IGNORECASE)


def scrub(text: str) -> str:
    """Cut a jwt query value or a Bearer token that is in clear; a redacted one (ending in
    `…`) stays as logged."""

    def jwt(m: re.Match[str]) -> str:
        value = unquote_plus(m.group(2))
        return m.group(0) if not value or value.endswith("…") else m.group(1) + redact(value)

    text = _JWT_PARAM.sub(jwt, text)
    return _BEARER.sub(lambda m: m.group(1) + "…", text)


def shown_record(record: Record) -> str:
    """A record as its tooltip shows it: JSON, every secret cut."""
    clean = {k: v for k, v in record.items() if k != "ts"}
    if isinstance(clean.get("jwt"), str) and clean["jwt"] and not clean["jwt"].endswith("…"):
        clean["jwt"] = redact(clean["jwt"])
    return scrub(json.dumps(clean, indent=1, ensure_ascii=False, default=str))


def css_class(decision: str) -> str:
    return decision if decision in ORDER else "other"


def offset(seconds: float) -> str:
    if seconds < 60:
        return f"+{seconds:.3f} s"
    minutes, rest = divmod(seconds, 60)
    return f"+{int(minutes)}:{rest:06.3f}"


def clock(ts: float) -> str:
    if ts <= 0:
        return "unknown time"
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"


def short(text: str, size: int = 22) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


def status_text(value: object) -> str:
    return str(value) if value is not None else "no answer"
