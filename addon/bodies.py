"""Reading messages without changing them: media types, bounded JSON bodies, browser_gone."""

from __future__ import annotations

import json

from mitmproxy import http

from .content_coding import decode_bounded
from .fallback_rule import MAX_GONE_BODY, is_browser_gone


def media_type(headers: http.Headers) -> str:
    """The first Content-Type's media type, lower case, "" when there is none. Read off the raw
    fields: every answer is asked, and mitmproxy's lookup decodes every header name."""
    for name, value in headers.fields:
        if len(name) == 12 and name.lower() == b"content-type":  # the length test spares a lower()
            return value.split(b";", 1)[0].strip().lower().decode("latin-1")
    return ""


def is_json(headers: http.Headers) -> bool:
    media = media_type(headers)
    return media == "application/json" or media.endswith("+json")


def json_body(message: http.Message, limit: int) -> object:
    """The message's JSON body, or None when it is absent, streamed, not in an HTTP content
    coding, larger than `limit` once decoded, or not JSON. Never alters the message."""
    raw = message.raw_content
    if not raw:
        return None
    body = decode_bounded(raw, message.headers.get("content-encoding", ""), limit)
    try:
        return json.loads(body) if body is not None else None
    except (ValueError, RecursionError):
        return None


def read_404_body(response: http.Response) -> bytes | None:
    """The decoded body of a buffered 404, or None when it was streamed, cannot be decoded,
    or is too large to be browser_gone."""
    if response.raw_content is None or len(response.raw_content) > MAX_GONE_BODY:
        return None
    return decode_bounded(response.raw_content, response.headers.get("content-encoding", ""), MAX_GONE_BODY)


def may_be_gone(response: http.Response) -> bool:
    """Whether an answer could be browser_gone, so is worth buffering: a 404 within the bound."""
    if response.status_code != 404:
        return False
    declared = response.headers.get("content-length", "")
    return not (declared.isdigit() and int(declared) > MAX_GONE_BODY)


def is_gone(response: http.Response) -> bool:
    return response.status_code == 404 and is_browser_gone(read_404_body(response))
