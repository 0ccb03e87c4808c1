"""The control-plane fallback predicate and bounded body decoding: pure, no mitmproxy import."""

from __future__ import annotations

import json
import zlib

import brotli

try:  # Python 3.14+; mitmproxy brings the backport on older versions
    from compression import zstd
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd

# A browser_gone answer is a few dozen bytes; a 404 larger than this is passed
# through untouched (and streamed when its length is declared) instead of held in memory.
MAX_GONE_BODY = 64 * 1024


def decode_bounded(body: bytes, content_encoding: str, limit: int = MAX_GONE_BODY) -> bytes | None:
    """`body` decoded per its Content-Encoding, or None when it cannot be decoded or would
    decode to more than `limit` bytes: a few hundred compressed bytes can inflate to gigabytes."""
    for coding in reversed([c.strip().lower() for c in content_encoding.split(",") if c.strip()]):
        try:
            if coding == "identity":
                continue
            if coding in ("gzip", "x-gzip"):
                body = zlib.decompressobj(wbits=31).decompress(body, limit + 1)
            elif coding == "deflate":  # zlib-wrapped as the RFC says, or raw as some servers send it
                try:
                    body = zlib.decompressobj(wbits=15).decompress(body, limit + 1)
                except zlib.error:
                    body = zlib.decompressobj(wbits=-15).decompress(body, limit + 1)
            elif coding == "br":
                body = brotli.Decompressor().process(body, output_buffer_limit=limit + 1)
            elif coding == "zstd":
                body = zstd.ZstdDecompressor().decompress(body, max_length=limit + 1)
            else:
                return None
        except (zlib.error, brotli.error, zstd.ZstdError):
            return None
        if len(body) > limit:
            return None
    return body if len(body) <= limit else None  # the bound holds for an identity body too


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
