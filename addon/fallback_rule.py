"""The control-plane fallback predicate: pure, no mitmproxy import."""

from __future__ import annotations

import json

# A browser_gone answer is a few dozen bytes; a 404 larger than this is passed
# through untouched (and streamed when its length is declared) instead of held in memory.
MAX_GONE_BODY = 64 * 1024


def is_browser_gone(body: bytes | None) -> bool:
    """Whether a decoded 404 body is a JSON object whose `code` is "browser_gone"."""
    if body is None or len(body) > MAX_GONE_BODY:
        return False
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and doc.get("code") == "browser_gone"


def no_fallback_reason(method: str, eligible: bool, status: int | None, body: bytes | None) -> str | None:
    """None when a routed flow must fall back to the CP, else the first reason it must not.

    `status` None means the VM gave no answer; `body` is the decoded 404 body, or
    None when it was not read.
    """
    if status is None:
        return "vm_error"
    if method != "GET":
        return "not_get"
    if not eligible:
        return "not_eligible"
    if status != 404:
        return "status"
    if not is_browser_gone(body):
        return "not_browser_gone"
    return None
