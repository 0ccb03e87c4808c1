"""The route cache and route extraction from control-plane JSON: no mitmproxy import."""

from __future__ import annotations

import base64
import binascii
import fnmatch
import functools
import json
import sys
from collections.abc import Iterable, Iterator
from urllib.parse import parse_qs, urlsplit

from .decisions import Decision


@functools.lru_cache(maxsize=256)  # the same browsers are read again and again (GET /browsers/{id})
def pack_jwt(jwt: str) -> bytes | str:
    """A jwt's base64url parts as raw bytes, each after its 2-byte length: about a quarter
    smaller, and a cache may hold 100,000 of them. The jwt itself when it would not come
    back exactly (not three base64url parts, padding, odd bits)."""
    try:
        raw = [base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)) for part in jwt.split(".")]
        packed = b"".join(len(part).to_bytes(2, "big") + part for part in raw)
    except (ValueError, binascii.Error, OverflowError):
        return jwt
    return packed if len(raw) == 3 and unpack_jwt(packed) == jwt else jwt


def unpack_jwt(packed: bytes | str) -> str:
    if isinstance(packed, str):
        return packed
    parts, at = [], 0
    while at < len(packed):
        size = int.from_bytes(packed[at : at + 2], "big")
        parts.append(base64.urlsafe_b64encode(packed[at + 2 : at + 2 + size]).rstrip(b"=").decode("ascii"))
        at += 2 + size
    return ".".join(parts)


class Route:
    """What is known of one browser session. Immutable; slots and a packed jwt, because a
    cache may hold 100,000 of them."""

    __slots__ = ("_jwt", "base_url", "name", "session_id")

    def __init__(self, session_id: str, base_url: str, jwt: str, name: str | None = None) -> None:
        self.session_id = session_id
        self.base_url = base_url  # without a trailing slash
        self._jwt = pack_jwt(jwt)
        self.name = name  # the SDKs accept a browser's name where its id goes

    @property
    def jwt(self) -> str:
        return unpack_jwt(self._jwt)

    def _key(self) -> tuple[str, str, bytes | str, str | None]:
        return (self.session_id, self.base_url, self._jwt, self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Route) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        fields = f"{self.session_id!r}, {self.base_url!r}, jwt={redact(self.jwt)!r}, name={self.name!r}"
        return f"Route({fields})"

    def as_dict(self) -> dict[str, str | None]:
        """As the routes file keeps it (with the jwt in clear: that file is private)."""
        return {"session_id": self.session_id, "base_url": self.base_url, "jwt": self.jwt, "name": self.name}


def redact(secret: str) -> str:
    """A short prefix, enough to tell two tokens apart in a log, useless to replay."""
    return secret[: min(6, len(secret) // 3)] + "…" if secret else ""


@functools.lru_cache(maxsize=256)
def jwt_from_cdp_ws_url(cdp_ws_url: str) -> str | None:
    try:
        values = parse_qs(urlsplit(cdp_ws_url).query).get("jwt")
    except ValueError:
        return None
    return values[0].strip() if values and values[0].strip() else None


def route_from_object(obj: dict[object, object]) -> Route | None:
    """A route from one browser-like object, or None when a field is missing or mistyped."""
    session_id, base_url = obj.get("session_id"), obj.get("base_url")
    if not isinstance(session_id, str) or not isinstance(base_url, str):
        return None
    jwt_field, cdp_ws_url = obj.get("jwt"), obj.get("cdp_ws_url")
    if isinstance(jwt_field, str) and jwt_field.strip():
        jwt: str | None = jwt_field.strip()
    elif isinstance(cdp_ws_url, str):
        jwt = jwt_from_cdp_ws_url(cdp_ws_url)
    else:
        jwt = None
    session_id, base_url = session_id.strip(), base_url.strip().rstrip("/")
    if not session_id or not base_url or not jwt:
        return None
    name = obj.get("name")
    name = name.strip() if isinstance(name, str) and name.strip() else None
    # Interned: every browser of a metro shares one base_url, kept once instead of per route.
    return Route(session_id, sys.intern(base_url), jwt, name)


def iter_browser_objects(value: object) -> Iterator[dict[object, object]]:
    """Every JSON object at any depth (lists, `items`, nested objects), depth first."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))


def iter_routes(value: object) -> Iterator[Route]:
    """Every route described in a JSON document, lazily (a page can hold thousands)."""
    return (r for obj in iter_browser_objects(value) if (r := route_from_object(obj)))


@functools.lru_cache(maxsize=1024)  # many routes share a base_url: a page of 20,000 has a handful
def refusal_reason(base_url: str, vm_hosts: tuple[str, ...]) -> str | None:
    """Why a base_url must not be used (`scheme`, `vm_host`), or None when it is fine."""
    try:
        parts = urlsplit(base_url)
        port = parts.port  # raises on a malformed port or one above 65535
    except ValueError:
        return "base_url"
    if port == 0 or parts.netloc.endswith(":"):
        return "base_url"  # mitmproxy would silently take the scheme's default port
    if any(c.isspace() or not c.isprintable() for c in base_url):
        return "base_url"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "scheme"
    if "?" in base_url or "#" in base_url or "@" in parts.netloc:
        return "base_url"  # paths are joined onto it: a query, fragment or user info has no place
    host = parts.hostname.lower()
    if not any(fnmatch.fnmatchcase(host, glob) for glob in vm_hosts):
        return "vm_host"
    return None


def route_refusal(route: Route, vm_hosts: tuple[str, ...]) -> str | None:
    """Why a route must not be cached (`encoding`, or the base_url's reason), or None."""
    try:
        for text in (route.session_id, route.base_url, route.jwt, route.name or ""):
            text.encode("utf-8")  # a lone surrogate ("\\ud800" in JSON) has no place in a URL or log
    except UnicodeEncodeError:
        return "encoding"
    return refusal_reason(route.base_url, vm_hosts)


class RouteCache:
    """Routes by session id, also found by browser name; one cache serves every CP origin."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._ids_by_name: dict[str, str] = {}

    def _resolve(self, key: str) -> str:
        key = key.strip()
        return key if key in self._routes else self._ids_by_name.get(key, key)

    def get(self, key: str) -> Route | None:
        return self._routes.get(self._resolve(key))

    def put(self, route: Route) -> bool:
        """Store a route; True when it is new or changed."""
        old = self._routes.get(route.session_id)
        if old == route:
            return False
        if old is not None:
            self._forget_name(old)
        self._routes[route.session_id] = route
        if route.name is not None:
            self._ids_by_name[route.name] = route.session_id
        return True

    def evict(self, key: str) -> Route | None:
        """Drop the route found by id or name, under both keys."""
        route = self._routes.pop(self._resolve(key), None)
        if route is not None:
            self._forget_name(route)
        return route

    def _forget_name(self, route: Route) -> None:
        """Drop the route's name unless a newer browser has taken it."""
        if route.name is not None and self._ids_by_name.get(route.name) == route.session_id:
            del self._ids_by_name[route.name]

    def __iter__(self) -> Iterator[Route]:
        return iter(list(self._routes.values()))

    def __len__(self) -> int:
        return len(self._routes)


def dump_routes(routes: Iterable[Route]) -> str:
    """The routes file's text: it holds jwts, so whoever writes it keeps it private."""
    return json.dumps({"routes": [r.as_dict() for r in routes]}, indent=1) + "\n"


def journal_line(change: str, route: Route) -> str:
    """One change of the cache as a line of the routes file's journal."""
    entry = {"put": route.as_dict()} if change == Decision.ROUTE_CACHED else {"evict": route.session_id}
    return json.dumps(entry) + "\n"


def replay_journal(routes: list[Route], lines: list[str]) -> tuple[list[Route], int]:
    """The routes after the journal's changes, and how many lines were unusable (a line cut
    short by a crash among them)."""
    by_id = {r.session_id: r for r in routes}
    unusable = 0
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        put = entry.get("put") if isinstance(entry, dict) else None
        evict = entry.get("evict") if isinstance(entry, dict) else None
        if isinstance(put, dict) and (route := route_from_object(put)) is not None:
            by_id[route.session_id] = route
        elif isinstance(evict, str):
            by_id.pop(evict, None)
        else:
            unusable += 1
    return list(by_id.values()), unusable


def load_routes(text: str) -> tuple[list[Route], int]:
    """Routes from a routes file's text, and how many entries were unusable.

    ValueError when the text is not a routes document at all.
    """
    doc = json.loads(text)
    entries = doc.get("routes") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ValueError('not a routes file: want {"routes": [...]}')
    routes = [r for e in entries if isinstance(e, dict) and (r := route_from_object(e))]
    return routes, len(entries) - len(routes)
