"""Path parsing and option-list parsing: pure functions, no mitmproxy import."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, unquote_plus, urlsplit, urlunsplit

VERSION_PREFIX = r"(?:/v\d+)?"
_SUBRESOURCE_PATH = re.compile(VERSION_PREFIX + r"/browsers/([^/]+)/([^/]+)(/.*)?$")
_BROWSERS_COLLECTION = re.compile(VERSION_PREFIX + r"/browsers/?$")
_BROWSER_BY_ID = re.compile(VERSION_PREFIX + r"/browsers/([^/]+)/?$")
_POOL_ACQUIRE = re.compile(VERSION_PREFIX + r"/browser_pools/[^/]+/acquire/?$")
_POOL_RELEASE = re.compile(VERSION_PREFIX + r"/browser_pools/[^/]+/release/?$")

# RFC 3986 pchar plus "/", with "%" only as a percent-escape: what a path entry may hold.
_PATH_ENTRY = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})+")
_HOST_GLOB = re.compile(r"[A-Za-z0-9\-._*?\[\]]+")
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?")

DEFAULT_SUBRESOURCES = "curl,telemetry/stream,computer,playwright,process,fs,logs/stream"
SUBRESOURCES_ENV = "KERNEL_BROWSER_ROUTING_SUBRESOURCES"


@dataclass(frozen=True)
class SubresourcePath:
    """`[/vN]/browsers/{id}/{subresource}{suffix}`, split."""

    session_key: str  # percent-decoded {id}: a session id or a browser name
    tail: str  # raw `{subresource}{suffix}`, without the leading slash


def split_path(path: str) -> tuple[str, str]:
    """Split a request target into (path, query) without decoding either."""
    path, _, query = path.partition("?")
    return path, query


def query_params(query: str) -> list[tuple[str, str]]:
    """(decoded name, raw piece) of each query parameter, in order."""
    return [(unquote_plus(p.partition("=")[0]), p) for p in query.split("&") if p]


def jwt_of(query: str) -> str | None:
    """The decoded value of the first `jwt` query parameter, or None."""
    if "jwt" not in query and "%" not in query:
        return None  # no name there can read `jwt`
    return next((unquote_plus(p.partition("=")[2]) for n, p in query_params(query) if n == "jwt"), None)


def without_jwt(query: str) -> str:
    """The query with every `jwt` parameter removed, the rest kept byte for byte, in order."""
    return "&".join(p for n, p in query_params(query) if n != "jwt")


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4."""
    segments = path.split("/")
    out: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment in (".", ".."):
            if segment == ".." and len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/".join(out)


def resolve(base: SplitResult, reference: str) -> SplitResult:
    """A reference resolved against a base URL, RFC 3986 section 5.2.2. (urljoin re-parses with
    urlparse, which drops an empty `;` parameter from the path.)"""
    ref = urlsplit(reference)
    if ref.scheme:
        return ref._replace(path=remove_dot_segments(ref.path))
    if ref.netloc:
        return ref._replace(scheme=base.scheme, path=remove_dot_segments(ref.path))
    if not ref.path:
        return base._replace(query=ref.query if "?" in reference else base.query, fragment=ref.fragment)
    if ref.path.startswith("/"):
        path = ref.path
    elif base.netloc and not base.path:
        path = "/" + ref.path
    else:
        path = base.path[: base.path.rfind("/") + 1] + ref.path
    return base._replace(path=remove_dot_segments(path), query=ref.query, fragment=ref.fragment)


def map_location(location: str, vm_url: str, tail: str, cp_path: str) -> str | None:
    """Where a routed answer's Location (or Content-Location) should send the client, or None
    to leave it. The client resolves it against the CP URL it sent, so one under the route's
    base_url goes back to the CP form (routed again on the follow-up) and any other relative
    one is made absolute on the VM; neither keeps the jwt. `vm_url` is the URL the request was
    sent to (base_url + "/" + tail), `cp_path` the path the client sent."""
    vm = urlsplit(vm_url)
    target = resolve(vm, location)
    vm_path = vm.path
    if not vm_path.endswith("/" + tail) or not cp_path.endswith(tail):
        return None
    base_path, cp_prefix = vm_path[: -len(tail) - 1], cp_path[: -len(tail)].rstrip("/")
    same_origin = (target.scheme, target.netloc.lower()) == (vm.scheme, vm.netloc.lower())
    if same_origin and (target.path == base_path or target.path.startswith(base_path + "/")):
        return urlunsplit(
            ("", "", cp_prefix + target.path[len(base_path) :], without_jwt(target.query), target.fragment)
        )
    if not urlsplit(location).netloc and not urlsplit(location).scheme:  # relative, elsewhere on the VM
        return urlunsplit(
            (target.scheme, target.netloc, target.path, without_jwt(target.query), target.fragment)
        )
    return None


def has_dot_segment(path: str) -> bool:
    """Whether a segment is `.` or `..`, percent-encoded or not: the server would resolve it,
    so a path that looks allowlisted could name another subresource."""
    if "." not in path and "%" not in path:
        return False  # the common case, told without splitting
    return any(unquote(segment) in (".", "..") for segment in path.split("/"))


def parse_subresource_path(path: str) -> SubresourcePath | None:
    """Return the parts of a browser subresource path (no query), or None."""
    m = _SUBRESOURCE_PATH.match(path)
    if m is None or has_dot_segment(path):
        return None
    key = unquote(m.group(1)).strip()
    if not key:
        return None
    return SubresourcePath(session_key=key, tail=m.group(2) + (m.group(3) or ""))


def normalize_tail(tail: str) -> str:
    """Collapse repeated slashes and strip the outer ones: `/a//b/` -> `a/b`."""
    if "//" not in tail and not tail.startswith("/") and not tail.endswith("/"):
        return tail  # the common case, told without splitting
    return "/".join(part for part in tail.split("/") if part)


def is_allowlisted(tail: str, prefixes: tuple[str, ...]) -> bool:
    """Whether `tail` is covered by a prefix on a segment boundary.

    `telemetry/stream` covers `telemetry/stream` and `telemetry/stream/x`, not
    `telemetry/streamx`, so control-plane-only reads stay off the VM.
    """
    tail = normalize_tail(tail)
    return any(tail == p or tail.startswith(p + "/") for p in prefixes)


def is_fallback_eligible(tail: str, eligible: tuple[str, ...]) -> bool:
    """Exact match after slash normalisation."""
    return normalize_tail(tail) in eligible


def route_source(method: str, path: str) -> str | None:
    """What a CP browser-metadata call is (`create`, `list`, `retrieve`, `update`,
    `pool_acquire`), or None for calls whose responses do not describe browsers. Like the
    SDKs, any method but DELETE on the browsers paths teaches (a PATCH returns the browser)."""
    if method == "POST" and _POOL_ACQUIRE.match(path):
        return "pool_acquire"
    if method == "DELETE":
        return None
    if _BROWSERS_COLLECTION.match(path):
        return {"POST": "create", "GET": "list"}.get(method, "update")
    if _BROWSER_BY_ID.match(path):
        return "retrieve" if method == "GET" else "update"
    return None


def deleted_browser_key(method: str, path: str) -> str | None:
    """The percent-decoded {id} of `DELETE [/vN]/browsers/{id}`, or None."""
    if method != "DELETE":
        return None
    m = _BROWSER_BY_ID.match(path)
    if m is None:
        return None
    return unquote(m.group(1)).strip() or None


def is_pool_release(method: str, path: str) -> bool:
    return method == "POST" and _POOL_RELEASE.match(path) is not None


def parse_list(value: str) -> list[str]:
    """A comma-separated option value; empty entries are skipped."""
    return [part.strip() for part in value.split(",") if part.strip()]


def parse_path_entries(value: str) -> tuple[str, ...]:
    """Allowlist or registry entries, slash-normalised; ValueError names a bad one."""
    entries = []
    for entry in parse_list(value):
        if not _PATH_ENTRY.fullmatch(entry) or not normalize_tail(entry) or has_dot_segment(entry):
            raise ValueError(f"{entry!r} is not a URL path")
        entries.append(normalize_tail(entry))
    return tuple(entries)


def parse_origins(value: str) -> tuple[tuple[str, str, int], ...]:
    """`scheme://host[:port]` entries as (scheme, host, port); ValueError names a bad one."""
    origins = []
    for entry in parse_list(value):
        want = f"{entry!r} is not an origin (want http[s]://host[:port])"
        try:
            parts = urlsplit(entry)
            port = parts.port
        except ValueError as e:
            raise ValueError(f"{want}: {e}") from None
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("http", "https") or not (_HOST_NAME.fullmatch(host) or is_ip(host)):
            raise ValueError(want)
        if parts.path not in ("", "/") or "?" in entry or "#" in entry or "@" in parts.netloc:
            raise ValueError(f"{want}: no path, query or user info")
        if port == 0 or parts.netloc.endswith(":"):
            raise ValueError(f"{want}: a port is 1 to 65535")
        origins.append((parts.scheme, host, port or (443 if parts.scheme == "https" else 80)))
    if not origins:
        raise ValueError("at least one origin is required")
    return tuple(origins)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_host_globs(value: str) -> tuple[str, ...]:
    globs = []
    for entry in parse_list(value):
        if not _HOST_GLOB.fullmatch(entry):
            hint = ": globs match host names, without a port" if ":" in entry else ""
            raise ValueError(f"{entry!r} is not a host glob{hint}")
        globs.append(entry.lower())
    return tuple(globs)
