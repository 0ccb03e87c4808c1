"""Routes allowlisted browser subresource requests to the VM, and keeps the route cache."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from mitmproxy import ctx, exceptions, http
from mitmproxy.net.http import url

from . import paths
from .bodies import is_json, json_body, media_type
from .decisions import CP_AS_SENT, Decision
from .fallback_rule import MAX_GONE_BODY
from .recorder import METADATA_KEY, DecisionRecorder, record_of
from .route_cache import Route, RouteCache, iter_routes, refusal_reason, route_refusal

if TYPE_CHECKING:  # the core knows fault injection only as the part it hands routed flows to
    from .faults import FaultInjection

logger = logging.getLogger(__name__)

MODES = ("route", "audit")
# A page of browsers, decoded: 20,000 browsers are about 10 MB; a larger body teaches nothing.
MAX_BROWSERS_BODY = 32 * 1024 * 1024
LEARN_SLICE = 500  # routes learned between two turns of the event loop


def vm_target(base_path: str, route: Route, tail: str, query: str) -> str:
    """The VM request target for `{subresource}{suffix}`: base_url's path joined with the raw
    tail, the client's query kept in order, the route's jwt added unless the client sent one."""
    if paths.jwt_of(query) is None:
        query = f"{query}&{jwt_param(route)}" if query else jwt_param(route)
    return f"{base_path}/{tail}" + (f"?{query}" if query else "")


@functools.lru_cache(maxsize=256)  # the routes in use, spared unpacking and quoting their jwt each time
def jwt_param(route: Route) -> str:
    return f"jwt={quote(route.jwt, safe='')}"


@functools.lru_cache(maxsize=1024)  # a handful of base_urls serve every route
def vm_origin(base_url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of a base_url that the cache accepted."""
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname or "", port, parts.path.rstrip("/")


def rewrite_to_vm(request: http.Request, route: Route, tail: str, query: str) -> str:
    """Point the request at the VM, its Authorization header dropped; returns the VM URL. Field
    by field, as mitmproxy's setters would: the URL setter's parser drops an empty `;` parameter
    from the path, and the host setter looks the headers up twice."""
    scheme, host, port, base_path = vm_origin(route.base_url)
    target = vm_target(base_path, route, tail, query)
    hostport = url.hostport(scheme, host, port)
    d = request.data
    d.scheme, d.host, d.port = scheme.encode(), host, port
    request.path = target
    if d.authority:  # absolute-form or HTTP/2: it names the server too
        request.authority = hostport
    request.headers = VmHeaders.routed(request.headers.fields, hostport.encode("utf-8", "surrogateescape"))
    return f"{scheme}://{hostport}{target}"


class VmHeaders(http.Headers):
    """The headers of a request routed to a VM: an Authorization header never gets in, whoever
    adds it after the rewrite (modify_headers, stickyauth, another script). Every way of
    changing headers assigns `fields`, so guarding that assignment costs nothing per hook."""

    @property
    def fields(self) -> tuple[tuple[bytes, bytes], ...]:
        return self._fields

    @fields.setter
    def fields(self, value: Iterable[tuple[bytes, bytes]]) -> None:
        self._fields = tuple(field for field in value if field[0].lower() != b"authorization")

    @classmethod
    def routed(cls, fields: tuple[tuple[bytes, bytes], ...], host: bytes) -> VmHeaders:
        """The client's headers as the VM gets them: no Authorization, and a Host header (when
        there is one) naming the VM, the first kept and any other dropped, as mitmproxy's host
        setter does. Fields of existing headers need no second check: no __init__."""
        kept: list[tuple[bytes, bytes]] = []
        host_set = False
        for field in fields:
            name = field[0].lower()
            if name == b"host":
                if not host_set:
                    kept.append((field[0], host))
                    host_set = True
            elif name != b"authorization":
                kept.append(field)
        headers = cls.__new__(cls)
        headers._fields = tuple(kept)
        return headers


@dataclass(slots=True)
class ClientRequest:
    """What routing changes in a GET, kept to re-issue it to the CP as the client sent it.
    It holds the API key, so it lives here, never in flow.metadata."""

    scheme: bytes
    host: str
    port: int
    authority: bytes
    path: bytes
    fields: tuple[tuple[bytes, bytes], ...]  # the headers, Authorization included
    tail: str  # `{subresource}{suffix}` as the client sent it

    @classmethod
    def of(cls, request: http.Request, tail: str) -> ClientRequest:
        d = request.data
        return cls(d.scheme, d.host, d.port, d.authority, d.path, request.headers.fields, tail)

    def restore(self, request: http.Request) -> None:
        """Turn a copy of the request sent to the VM (method, body, version as they were) back
        into the client's: its URL, authority and headers."""
        d = request.data
        d.scheme, d.host, d.port, d.authority = self.scheme, self.host, self.port, self.authority
        d.path = self.path
        request.headers = http.Headers(self.fields)


class QuietRoutedStreams(logging.Filter):
    """mitmproxy logs "Streaming response from <host>." at info level for every streamed answer,
    and hands each line to every addon. Routed answers stream by design and their decision
    record says where they went, so those lines are dropped (other hosts' lines stay)."""

    PREFIX = "Streaming response from "

    def __init__(self) -> None:
        super().__init__()
        self.vm_hosts: set[str] = set()  # hosts this addon routed to

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        return not (
            isinstance(msg, str)
            and msg.startswith(self.PREFIX)
            and msg[len(self.PREFIX) : -1] in self.vm_hosts
        )


class Router:
    """Learns routes from control-plane responses and rewrites requests to the VM."""

    def __init__(self, recorder: DecisionRecorder, injector: FaultInjection) -> None:
        self.recorder = recorder
        self.injector = injector
        self.mode = "route"
        self.cache = RouteCache()
        # Told of every route cached or evicted: (change, route, reason, id of the flow that caused it).
        self.listeners: list[Callable[[str, Route, str, str | None], None]] = []
        self.quiet_streams = QuietRoutedStreams()
        self.cp_origins: dict[tuple[bytes, str, int], str] = {}
        self.subresources: tuple[str, ...] = ()
        self.vm_hosts: tuple[str, ...] = ()
        self.originals: dict[str, ClientRequest] = {}  # of each routed GET in flight, by flow id

    def take_over(self, old: Router) -> None:
        """On a reload: the routes, and the original requests of flows still in progress."""
        self.cache, self.originals = old.cache, old.originals

    def load(self, loader: Any) -> None:
        loader.add_option(
            "browserrouting_mode", str, "route",
            "route: rewrite allowlisted browser calls to the VM and fall back to the CP; audit: "
            "rewrite nothing, judge a client that routes by itself against the same rules.",
        )  # fmt: skip
        loader.add_option(
            "browserrouting_control_plane", str, "https://api.onkernel.com",
            "Comma-separated control-plane origins (scheme://host[:port]) whose browser "
            "calls are routed and whose responses fill the route cache.",
        )  # fmt: skip
        loader.add_option(
            "browserrouting_subresources", str,
            os.environ.get(paths.SUBRESOURCES_ENV, paths.DEFAULT_SUBRESOURCES),
            "Comma-separated allowlist of browser subresource path prefixes routed to the VM, "
            f"matched on segment boundaries; defaults to ${paths.SUBRESOURCES_ENV} when set.",
        )  # fmt: skip
        loader.add_option(
            "browserrouting_vm_hosts", str, "*.onkernel.com",
            "Comma-separated host globs a browser's base_url may point at; routes to other "
            "hosts are refused (* allows any).",
        )  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        parsers = {
            "browserrouting_control_plane": ("origins", paths.parse_origins),
            "browserrouting_subresources": ("subresources", paths.parse_path_entries),
            "browserrouting_vm_hosts": ("vm_hosts", paths.parse_host_globs),
        }
        if "browserrouting_mode" in updated and ctx.options.browserrouting_mode not in MODES:
            raise exceptions.OptionsError(
                f"browserrouting_mode: {ctx.options.browserrouting_mode!r} is not one of {', '.join(MODES)}"
            )
        parsed: dict[str, Any] = {}
        for name, (attr, parse) in parsers.items():
            if name in updated:
                value = getattr(ctx.options, name)
                try:
                    parsed[attr] = parse(value)
                except ValueError as e:
                    came_from_env = name == "browserrouting_subresources" and value == os.environ.get(
                        paths.SUBRESOURCES_ENV
                    )
                    hint = f" (the value of ${paths.SUBRESOURCES_ENV})" if came_from_env else ""
                    raise exceptions.OptionsError(f"{name}: {e}{hint}") from None
        for attr, value in parsed.items():
            setattr(self, attr, value)
        if "browserrouting_mode" in updated:
            self.mode = ctx.options.browserrouting_mode
        if "browserrouting_vm_hosts" in updated:
            for route in self.cache:
                if reason := refusal_reason(route.base_url, self.vm_hosts):
                    self.evict(route.session_id, reason)

    def running(self) -> None:
        logging.getLogger("mitmproxy.proxy.server").addFilter(self.quiet_streams)

    def done(self) -> None:
        logging.getLogger("mitmproxy.proxy.server").removeFilter(self.quiet_streams)

    @property
    def origins(self) -> tuple[tuple[str, str, int], ...]:
        return tuple((scheme.decode(), host, port) for scheme, host, port in self.cp_origins)

    @origins.setter
    def origins(self, origins: tuple[tuple[str, str, int], ...]) -> None:
        # Keyed as mitmproxy keeps a request's parts, to look one up without converting it;
        # each maps to the origin as a URL prefix, the start of a record's `url`.
        self.cp_origins = {
            (scheme.encode(), host, port): f"{scheme}://{url.hostport(scheme, host, port)}"
            for scheme, host, port in origins
        }

    def cp_origin(self, request: http.Request) -> str | None:
        """`scheme://host[:port]` when the request goes to a CP origin, else None."""
        d = request.data
        return self.cp_origins.get((d.scheme, d.host.lower(), d.port))

    def is_control_plane(self, request: http.Request) -> bool:
        return self.cp_origin(request) is not None

    def on_requestheaders(self, flow: http.HTTPFlow) -> None:
        # Decided on the headers: mitmproxy connects upstream right after this hook when the
        # request body streams (stream_large_bodies), so the `request` hook would be too late.
        if flow.response or flow.error or not flow.live:
            return  # answered already (server replay), or an offline read
        if METADATA_KEY in flow.metadata:  # decided before: a fallback's re-issue, or a replayed flow
            record = record_of(flow)
            if record is not None and record["decision"] == Decision.REISSUE:
                return  # a fallback's re-issue goes to the CP as it is
            if record is not None:  # a replayed flow is decided afresh, or not at all
                del flow.metadata[METADATA_KEY]
                flow.comment, flow.marked = "", ""
        if self.mode != "route" or (origin := self.cp_origin(flow.request)) is None:
            return
        raw = flow.request.data.path
        target = raw.decode("utf-8", "surrogateescape")  # what the `path` property reads
        client_url = origin + target  # the record's url, built once from parts already at hand
        path, query = paths.split_path(target)
        # Most CP calls are not about a browser: told from the raw bytes, before any regex.
        sub = paths.parse_subresource_path(path) if b"/browsers/" in raw else None
        if sub is None:
            self.recorder.start(flow, Decision.PASSTHROUGH, "not_browser_subresource", client_url)
            return
        if not paths.is_allowlisted(sub.tail, self.subresources):
            self.recorder.start(flow, Decision.PASSTHROUGH, "not_allowlisted", client_url, sub.session_key)
            return
        route = self.cache.get(sub.session_key)
        if route is None:
            self.recorder.start(flow, Decision.PASSTHROUGH, "no_route", client_url, sub.session_key)
            return
        client = ClientRequest.of(flow.request, sub.tail)
        try:
            vm_url = rewrite_to_vm(flow.request, route, sub.tail, query)
        except (ValueError, UnicodeError) as e:  # never half-routed: the request goes on as it came
            client.restore(flow.request)
            why = f"the VM URL cannot be built ({type(e).__name__})"  # the message could hold the jwt
            self.recorder.decide(
                flow,
                Decision.PASSTHROUGH,
                "rewrite_failed",
                session_id=route.session_id,
                url=client_url,
                error=why,
            )
            return
        if flow.request.method == "GET":  # only a GET can fall back to the CP
            self.originals[flow.id] = client
        host = flow.request.data.host
        self.quiet_streams.vm_hosts.add(host)
        self.recorder.decide(
            flow, Decision.ROUTED, session_id=route.session_id, url=client_url, vm_url=vm_url,
            vm_host=f"{host}:{flow.request.data.port}",
            **self.injector.apply(flow, (route.session_id, route.name), sub.tail),
        )  # fmt: skip

    def on_responseheaders(self, flow: http.HTTPFlow) -> None:
        """A CP answer."""
        assert flow.response is not None
        if media_type(flow.response.headers) == "text/event-stream":  # a stream the CP serves stays live
            flow.response.stream = True

    def on_response(self, flow: http.HTTPFlow, record: dict[str, Any]) -> Awaitable[None] | None:
        """Record the CP's status and learn from it; an awaitable when a large page is still
        being learned (see `learn`)."""
        decision, response = record["decision"], flow.response
        if decision not in CP_AS_SENT or response is None or not flow.live:
            return None  # offline reads (mitmdump -nr) keep their recorded decisions and teach nothing
        status = response.status_code
        if decision == Decision.PASSTHROUGH:
            record["cp_status"] = status  # the decision stands: only its status is new
        # Only /browsers and /browser_pools teach; most CP calls are neither, told from the raw path.
        return self.learn(flow) if 200 <= status < 300 and b"/browser" in flow.request.data.path else None

    def learn(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Fill or evict the cache from a successful control-plane response. A page of more than
        LEARN_SLICE browsers is learned in slices (the awaitable returned), so that other
        flows go on meanwhile."""
        assert flow.response
        method, path = flow.request.method, paths.split_path(flow.request.path)[0]
        if (key := paths.deleted_browser_key(method, path)) is not None:
            self.evict(key, "delete", flow)
        elif paths.is_pool_release(method, path):
            body = json_body(flow.request, MAX_GONE_BODY)
            session_id = body.get("session_id") if isinstance(body, dict) else None
            if isinstance(session_id, str) and session_id.strip():
                self.evict(session_id, "pool_release", flow)
        elif (source := paths.route_source(method, path)) and is_json(flow.response.headers):
            doc = json_body(flow.response, MAX_BROWSERS_BODY)
            if doc is None:
                logger.debug(f"no routes learned from {flow.id}: the body is not JSON")
            routes, known = iter_routes(doc), len(self.cache)
            if self.add_slice(routes, source, flow):
                return self.learn_rest(routes, source, flow, known)
            self.log_learned(known, source, flow)
        return None

    def add_slice(self, routes: Iterator[Route], source: str, flow: http.HTTPFlow) -> bool:
        """Add up to LEARN_SLICE routes; True when there may be more."""
        added = 0
        for route in itertools.islice(routes, LEARN_SLICE):
            self.add(route, source, flow)
            added += 1
        return added == LEARN_SLICE

    async def learn_rest(self, routes: Iterator[Route], source: str, flow: http.HTTPFlow, known: int) -> None:
        while self.add_slice(routes, source, flow):
            await asyncio.sleep(0)
        self.log_learned(known, source, flow)

    def log_learned(self, known: int, source: str, flow: http.HTTPFlow) -> None:
        # One line per page, and only for new routes: each log line costs every addon a hook call.
        if (new := len(self.cache) - known) > 0:
            logger.info(f"{new} new route(s) learned from {source} ({flow.id})")

    def add(self, route: Route, reason: str, flow: http.HTTPFlow | None = None) -> str | None:
        """Cache a route unless its base_url is refused; returns the refusal reason."""
        if refusal := route_refusal(route, self.vm_hosts):
            self.recorder.cache_changed(Decision.ROUTE_REFUSED, refusal, route, flow)
            return refusal
        if self.cache.put(route):
            self.recorder.cache_changed(Decision.ROUTE_CACHED, reason, route, flow)
            for listener in self.listeners:
                listener(Decision.ROUTE_CACHED, route, reason, flow.id if flow else None)
        return None

    def evict(self, key: str, reason: str, flow: http.HTTPFlow | None = None) -> Route | None:
        route = self.cache.evict(key)
        if route is not None:
            self.recorder.cache_changed(Decision.ROUTE_EVICTED, reason, route, flow)
            for listener in self.listeners:
                listener(Decision.ROUTE_EVICTED, route, reason, flow.id if flow else None)
        return route
