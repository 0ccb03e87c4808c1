"""Bounded decoding of a body per its Content-Encoding: pure, no mitmproxy import."""

from __future__ import annotations

import zlib

import brotli

try:  # Python 3.14+; mitmproxy brings the backport on older versions
    from compression import zstd
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd


def decode_bounded(body: bytes, content_encoding: str, limit: int) -> bytes | None:
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
