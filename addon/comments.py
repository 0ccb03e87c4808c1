"""How a decision record reads on its flow: the comment, its summary line and the marker.

Pure, no mitmproxy import. Records never hold a secret in clear.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

from .decisions import AUDIT, Decision
from .route_cache import redact

# Keys of mitmproxy/utils/emoji.py, so mitmweb draws them in the flow list.
MARKERS = {
    Decision.ROUTED: ":rocket:",
    Decision.PASSTHROUGH: ":arrow_right:",
    Decision.FALLBACK: ":arrows_counterclockwise:",
    Decision.NO_FALLBACK: ":x:",
    Decision.REISSUE: ":leftwards_arrow_with_hook:",
}


def printable(text: str) -> str:
    """`text` as valid UTF-8: a lone surrogate (JSON's "\\ud800") becomes an escape."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def redact_url(url: str) -> str:
    """The URL with every `jwt` query value cut to a short prefix."""
    base, sep, query = url.partition("?")
    if not sep or ("jwt" not in query and "%" not in query):
        return url  # no name there can read `jwt`
    parts = []
    for piece in query.split("&"):
        key, eq, value = piece.partition("=")
        if eq and unquote_plus(key) == "jwt":
            piece = f"{key}={redact(unquote_plus(value))}"
        parts.append(piece)
    return base + "?" + "&".join(parts)


def injected(record: dict[str, Any]) -> str | None:
    """The injected step as a rule writes it (`502`, `gone@1500`, `delay@300`), or None."""
    kind = record.get("injected")
    if not kind:
        return None
    delay = record.get("injected_delay_ms")
    return f"{kind}@{delay}" if delay else str(kind)


def marker(record: dict[str, Any]) -> str:
    """The flow-list marker: an audited flow says whether it conforms."""
    if record["decision"] in AUDIT:
        return ":warning:" if record.get("violations") else ":white_check_mark:"
    return MARKERS.get(record["decision"], ":default:")


def audit_summary(record: dict[str, Any]) -> str:
    """`audit ok` or `audit <first violation>`, then what the client did and was answered."""
    d, violations, notes = record["decision"], record.get("violations") or [], record.get("notes") or []
    vm, cp = record.get("vm_status"), record.get("cp_status")
    text = f"audit {violations[0] if violations else 'ok'}: {d}"
    if d == Decision.CLIENT_ROUTED:
        text += f", VM {vm if vm is not None else 'no answer'}"
    else:
        text += f" of flow {record.get('serves')}" if d == Decision.CLIENT_FALLBACK else ""
        text += f", CP {cp if cp is not None else 'no answer'}"
    if step := injected(record):
        text += f" (injected {step})"
    return text + (f" [{', '.join(notes)}]" if notes else "")


def summary(record: dict[str, Any]) -> str:
    """One line that says what happened to the flow, starting with the decision, so that
    mitmweb's narrow Comment column tells decisions apart."""
    d, reason = record["decision"], record.get("reason")
    vm, cp = record.get("vm_status"), record.get("cp_status")
    if d == Decision.ROUTED:
        text = f"routed to VM {record.get('vm_host', '')}".rstrip()
        text += f" ({vm})" if vm is not None else ""
    elif d == Decision.PASSTHROUGH:
        text = f"passthrough ({reason})"
        text += f", CP {cp}" if cp is not None else ""
    elif d == Decision.FALLBACK:
        text = f"fallback: VM {vm} browser_gone, CP re-issue {cp if cp is not None else 'failed'}"
    elif d == Decision.NO_FALLBACK:
        text = f"no_fallback ({reason}), VM {vm if vm is not None else 'no answer'}"
    elif d == Decision.REISSUE:
        text = f"reissue for flow {record.get('serves')}, CP {cp if cp is not None else 'failed'}"
    elif d in AUDIT:
        text = audit_summary(record)
    else:
        text = f"{d} ({reason})" if reason else d
    session = record.get("session_id")
    return text + (f" [{session}]" if session else "")


def comment(record: dict[str, Any]) -> str:
    """The summary line, then every field of the record in the order it was learned, for
    mitmweb's Comment tab. The tab folds newlines, so each field line starts with a separator."""
    fields = "\n".join(
        [
            f"· {key}: {value}" if type(value) is not list else f"· {key}: {listed(key, value, record)}"
            for key, value in record.items()
            if value is not None
        ]
    )
    return f"{summary(record)}\n{fields}"  # a record has a decision at least


def listed(key: str, value: list[Any], record: dict[str, Any]) -> str:
    """A list field as one line: the cache changes on record, and how many more the log has."""
    if key != "cache":
        return ", ".join(map(str, value)) or "none"
    text = "; ".join(f"{c['decision']} {c.get('session_id')} ({c.get('reason')})" for c in value)
    more = record.get("cache_changes", 0) - len(value)
    return text + (f"; and {more} more (see the log)" if more > 0 else "")
