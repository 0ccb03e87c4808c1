"""Property-based tests (hypothesis) of the pure parts: path parsing, allowlist and registry
matching, route extraction, the URL rewrite, Location mapping, body decoding and redaction.

They never raise on any text (lone surrogates included), the rewrite round-trips (the tail
and every non-jwt query parameter survive, in order; a Location under base_url maps back to
the CP path) and redaction never leaks a jwt.
"""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import quote, unquote_plus, urlsplit

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mitmproxy.net.http.url import hostport
from mitmproxy.test import tflow, tutils

from addon import paths
from addon.audit import rules as audit
from addon.comments import comment, printable, redact_url, summary
from addon.content_coding import decode_bounded
from addon.fallback_rule import is_browser_gone
from addon.faults import rules as inject
from addon.recorder import DecisionRecorder
from addon.route_cache import (
    Route,
    RouteCache,
    iter_routes,
    redact,
    refusal_reason,
    route_from_object,
    route_refusal,
)
from addon.router import rewrite_to_vm, vm_origin, vm_target

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ANY_TEXT = st.text(st.characters(exclude_categories=()))  # surrogates and control characters too
URLISH = st.text(st.sampled_from("/%.?&=#:@+ abcAB019-_~\x00\ud800é"), max_size=40)
TEXT = st.one_of(ANY_TEXT, URLISH)
SEGMENT = st.text(st.sampled_from("abcxyz019-_~.!$'()*;:@"), min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..")
)
TAIL = st.lists(SEGMENT, min_size=1, max_size=4).map("/".join)
PARAM = st.tuples(st.text(min_size=1, max_size=6), st.text(max_size=8)).filter(lambda p: p[0] != "jwt")
QUERY_PIECES = st.lists(PARAM.map(lambda p: f"{quote(p[0], safe='')}={quote(p[1], safe='')}"), max_size=4)
JWT = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40).filter(
    lambda j: j.strip() == j
)
HOST = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,6}){0,2}", fullmatch=True)
BASE_URL = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{f':{port}' if port else ''}{path}",
    st.sampled_from(["http", "https"]), HOST, st.one_of(st.none(), st.integers(1, 65535)),
    st.lists(SEGMENT, max_size=3).map(lambda s: "".join("/" + x for x in s)),
)  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=20,
)


# --------------------------------------------------------------------------- never raise


@FAST
@given(TEXT, TEXT, TEXT)
def test_path_functions_never_raise_on_any_text(path: str, method: str, other: str) -> None:
    paths.split_path(path)
    paths.query_params(path)
    paths.jwt_of(path)
    paths.without_jwt(path)
    paths.has_dot_segment(path)
    paths.normalize_tail(path)
    paths.is_allowlisted(path, (other,))
    paths.is_fallback_eligible(path, (other,))
    paths.route_source(method, path)
    paths.deleted_browser_key(method, path)
    paths.is_pool_release(method, path)
    paths.map_location(path, other, method, path)
    audit.session_claim(path)
    sub = paths.parse_subresource_path(path)
    if sub is not None:  # what it gives back is usable as is
        assert sub.session_key and sub.session_key == sub.session_key.strip()
        assert path.endswith("/" + sub.tail) and not paths.has_dot_segment(path)


@FAST
@given(TEXT)
def test_option_parsers_raise_only_value_error(value: str) -> None:
    for parse in (paths.parse_path_entries, paths.parse_origins, paths.parse_host_globs, inject.parse_rules):
        with contextlib.suppress(ValueError):
            parse(value)


@FAST
@given(JSON)
def test_route_extraction_never_raises_and_gives_clean_routes(doc: Any) -> None:
    for route in iter_routes(doc):
        assert route.session_id and route.session_id == route.session_id.strip()
        assert route.jwt and route.jwt == route.jwt.strip()
        assert route.base_url and not route.base_url.endswith("/")
        route_refusal(route, ("*",))  # an unencodable field is a refusal, never an exception


@FAST
@given(st.dictionaries(st.sampled_from(["session_id", "base_url", "jwt", "cdp_ws_url", "name"]), JSON))
def test_route_from_any_browser_like_object_never_raises(obj: dict[object, object]) -> None:
    route = route_from_object(obj)
    if route is not None:
        assert isinstance(route.session_id, str) and isinstance(route.jwt, str)


@FAST
@given(st.binary(max_size=200), TEXT, st.integers(0, 1 << 16))
def test_decoding_any_body_in_any_coding_never_raises_and_stays_bounded(
    body: bytes, coding: str, limit: int
) -> None:
    decoded = decode_bounded(body, coding, limit)
    assert decoded is None or len(decoded) <= limit
    is_browser_gone(decoded)


@FAST
@given(TEXT, TEXT, TEXT, st.one_of(st.none(), TEXT))
def test_refusal_never_raises_and_refuses_what_cannot_be_encoded(
    sid: str, base: str, jwt: str, name: str | None
) -> None:
    route = Route(sid, base, jwt, name)
    reason = route_refusal(route, ("*",))
    encodable = all(printable(t) == t for t in (sid, base, jwt, name or ""))
    if not encodable:
        assert reason == "encoding"
    elif reason is None:
        assert refusal_reason(base, ("*",)) is None


# --------------------------------------------------------------------------- matching


@FAST
@given(TAIL, st.lists(SEGMENT, max_size=3), SEGMENT)
def test_an_allowlist_entry_covers_itself_and_below_on_segment_boundaries(
    entry: str, below: list[str], extra: str
) -> None:
    (parsed,) = paths.parse_path_entries(entry)
    assert paths.is_allowlisted("/".join([entry, *below]), (parsed,))
    assert paths.is_allowlisted(f"/{entry}//{'/'.join(below)}/", (parsed,))  # slashes normalised
    assert not paths.is_allowlisted(entry + extra, (parsed,))  # never a longer last segment


@FAST
@given(TAIL, SEGMENT)
def test_a_registry_entry_matches_exactly_after_slash_normalisation(entry: str, extra: str) -> None:
    (parsed,) = paths.parse_path_entries(entry)
    assert paths.is_fallback_eligible(f"//{entry.replace('/', '//')}/", (parsed,))
    assert not paths.is_fallback_eligible(f"{entry}/{extra}", (parsed,))
    assert not paths.is_fallback_eligible(entry + extra, (parsed,))


@FAST
@given(st.sampled_from(["", "/v1", "/v22"]), st.text(min_size=1, max_size=12), TAIL)
def test_a_subresource_path_gives_back_its_id_and_raw_tail(prefix: str, sid: str, tail: str) -> None:
    assume(sid.strip() and sid not in (".", ".."))
    assume(not any(0xD800 <= ord(c) <= 0xDFFF for c in sid))
    sub = paths.parse_subresource_path(f"{prefix}/browsers/{quote(sid, safe='')}/{tail}")
    assert sub is not None and sub.session_key == sid.strip() and sub.tail == tail


# --------------------------------------------------------------------------- the rewrite


def vm_url(route: Route, tail: str, query: str) -> str:
    """The VM URL a route gives a tail and query, written out from the router's parts."""
    scheme, host, port, base_path = vm_origin(route.base_url)
    return f"{scheme}://{hostport(scheme, host, port)}{vm_target(base_path, route, tail, query)}"


@FAST
@given(BASE_URL, JWT, TAIL, QUERY_PIECES)
def test_the_rewrite_keeps_the_tail_and_every_parameter_in_order_and_adds_the_jwt(
    base: str, jwt: str, tail: str, pieces: list[str]
) -> None:
    route, query = Route("s", base, jwt), "&".join(pieces)
    request = tutils.treq()
    rewrite_to_vm(request, route, tail, query)  # what routing does to the client's request
    want = urlsplit(base)
    default = 443 if want.scheme == "https" else 80
    assert (request.scheme, request.host, request.port) == (want.scheme, want.hostname, want.port or default)
    path, _, sent_query = request.path.partition("?")
    assert path == f"{want.path}/{tail}"
    assert paths.without_jwt(sent_query) == query
    assert paths.jwt_of(sent_query) == jwt
    assert request.url == vm_url(route, tail, query)  # the URL the record shows is the one sent


@FAST
@given(BASE_URL, JWT, TAIL, QUERY_PIECES, st.text(max_size=8))
def test_a_clients_own_jwt_is_kept_and_no_second_one_added(
    base: str, jwt: str, tail: str, pieces: list[str], own: str
) -> None:
    query = "&".join([*pieces, f"jwt={quote(own, safe='')}"])
    url = vm_url(Route("s", base, jwt), tail, query)
    assert urlsplit(url).query == query


@FAST
@given(BASE_URL, JWT, TAIL, TAIL, QUERY_PIECES, st.sampled_from(["", "/v1"]), st.booleans())
def test_a_location_under_base_url_maps_back_to_the_cp_path_without_the_jwt(
    base: str, jwt: str, tail: str, target: str, pieces: list[str], prefix: str, absolute: bool
) -> None:
    sent_to = vm_url(Route("s", base, jwt), tail, "")
    cp_path = f"{prefix}/browsers/sid-1/{tail}"
    origin, path = base[: len(base) - len(urlsplit(base).path)], urlsplit(base).path
    query = "&".join([*pieces[:1], f"jwt={quote(jwt, safe='')}", *pieces[1:]])
    location = f"{origin if absolute else ''}{path}/{target}" + (f"?{query}" if query else "")
    mapped = paths.map_location(location, sent_to, tail, cp_path)
    assert mapped == f"{prefix}/browsers/sid-1/{target}" + (f"?{'&'.join(pieces)}" if pieces else "")


@FAST
@given(BASE_URL, JWT, TAIL, TEXT)
def test_a_mapped_location_never_carries_a_jwt(base: str, jwt: str, tail: str, location: str) -> None:
    mapped = paths.map_location(
        location, vm_url(Route("s", base, jwt), tail, ""), tail, f"/browsers/x/{tail}"
    )
    if mapped is not None:
        assert paths.jwt_of(urlsplit(mapped).query) is None


# --------------------------------------------------------------------------- redaction

SECRET = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=60)


@FAST
@given(SECRET)
def test_a_redacted_secret_never_holds_the_secret(secret: str) -> None:
    assert secret not in redact(secret)


@FAST
@given(st.lists(PARAM.map(lambda p: f"{quote(p[0])}={quote(p[1])}"), max_size=3), SECRET, st.integers(0, 3))
def test_a_redacted_url_holds_no_jwt_in_clear(pieces: list[str], jwt: str, at: int) -> None:
    base = "https://api.example.test/browsers/x/fs"
    url = f"{base}?" + "&".join([*pieces[:at], f"jwt={quote(jwt, safe='')}", *pieces[at:]])
    redacted = redact_url(url)
    for name, piece in paths.query_params(urlsplit(redacted).query):
        if name == "jwt":
            value = piece.partition("=")[2]
            assert jwt not in unquote_plus(value) and quote(jwt, safe="") not in value
    if len(jwt) >= 8 and not any(jwt in unquote_plus(p) for p in [base, *pieces]):
        assert jwt not in unquote_plus(redacted) and quote(jwt, safe="") not in redacted


@FAST
@given(BASE_URL, st.text(st.sampled_from("abcdefXYZ0189-_."), min_size=12, max_size=40), TAIL, QUERY_PIECES)
def test_a_routed_record_and_its_comment_hold_no_jwt(
    base: str, jwt: str, tail: str, pieces: list[str]
) -> None:
    url = vm_url(Route("s", base, jwt), tail, "&".join(pieces))
    assume(jwt not in url.replace(quote(jwt, safe=""), ""))
    flow = tflow.tflow()
    flow.request.url = url
    recorder = DecisionRecorder()
    recorder.decide(flow, "routed", session_id="s", vm_url=url)
    record = flow.metadata["browserrouting"]
    for text in (str(record), flow.comment, summary(record), comment(record)):
        assert jwt not in text and quote(jwt, safe="") not in text


@FAST
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "evict"]),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["n1", "n2", None]),
        )
    )
)
def test_the_cache_finds_a_route_by_id_or_name_until_it_is_evicted(
    ops: list[tuple[str, str, str | None]],
) -> None:
    cache, model = RouteCache(), {}
    for op, sid, name in ops:
        if op == "put":
            cache.put(Route(sid, "https://h.example/b", f"jwt-{sid}", name))
            model[sid] = name
        else:
            cache.evict(sid)
            model.pop(sid, None)
    assert {r.session_id for r in cache} == set(model)
    for sid in model:
        found = cache.get(sid)
        assert found is not None and found.session_id == sid
