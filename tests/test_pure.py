"""Unit tests of the pure modules: paths, routes, fallback, decisions (no mitmproxy flows)."""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from mitmproxy.utils.emoji import emoji

from addon import paths
from addon.decisions import MARKERS, JsonLinesLog, comment, redact_url, summary
from addon.fallback import MAX_GONE_BODY, is_browser_gone, no_fallback_reason
from addon.paths import (
    SubresourcePath,
    deleted_browser_key,
    is_allowlisted,
    is_fallback_eligible,
    is_pool_release,
    normalize_tail,
    parse_host_globs,
    parse_list,
    parse_origins,
    parse_path_entries,
    parse_subresource_path,
    route_source,
    split_path,
)
from addon.routes import (
    Route,
    RouteCache,
    dump_routes,
    iter_routes,
    journal_line,
    jwt_from_cdp_ws_url,
    load_routes,
    redact,
    refusal_reason,
    replay_journal,
    route_from_object,
)

BASE = "https://proxy.iad.vm.test:8443/browser/kernel"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzaWQiOiJzMSJ9.signature-SECRET"


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("path", "key", "tail"),
    [
        ("/browsers/abc/fs/read", "abc", "fs/read"),
        ("/browsers/abc/curl", "abc", "curl"),
        ("/v1/browsers/abc/telemetry/events", "abc", "telemetry/events"),
        ("/v12/browsers/abc/telemetry/stream/", "abc", "telemetry/stream/"),
        ("/browsers/my%20browser/fs", "my browser", "fs"),
        ("/browsers/a%2Fb/fs", "a/b", "fs"),
        ("/browsers/s%69d/process/x", "sid", "process/x"),
        # the tail stays raw: percent-encoding is not decoded
        ("/browsers/abc/fs/file%20name%3F.txt", "abc", "fs/file%20name%3F.txt"),
    ],
)
def test_parse_subresource_path(path: str, key: str, tail: str) -> None:
    assert parse_subresource_path(path) == SubresourcePath(session_key=key, tail=tail)


@pytest.mark.parametrize(
    "path",
    [
        "/browsers",
        "/browsers/",
        "/browsers/x",
        "/browsers/x/",
        "/v1/browsers/x",
        "/v1/browsers",
        "/browsers//fs",
        "/browsers/%20/fs",  # an id that is blank once decoded
        "/profiles/x/fs",
        "/api/browsers/x/fs",
        "/vx/browsers/x/fs",
        "/browser_pools/p/acquire",
    ],
)
def test_parse_subresource_path_no_match(path: str) -> None:
    assert parse_subresource_path(path) is None


def test_split_path_keeps_query_raw() -> None:
    assert split_path("/browsers/a/fs?path=%2Ftmp&x") == ("/browsers/a/fs", "path=%2Ftmp&x")
    assert split_path("/browsers") == ("/browsers", "")


@pytest.mark.parametrize(
    ("tail", "normalised"),
    [("a/b", "a/b"), ("/a//b/", "a/b"), ("a", "a"), ("//", ""), ("a/%2F/b", "a/%2F/b")],
)
def test_normalize_tail(tail: str, normalised: str) -> None:
    assert normalize_tail(tail) == normalised


@pytest.mark.parametrize(
    ("tail", "prefixes", "covered"),
    [
        ("telemetry/events", ("telemetry",), True),
        ("telemetry/stream", ("telemetry",), True),
        ("telemetry", ("telemetry",), True),
        ("telemetryx", ("telemetry",), False),
        ("telemetry/stream", ("telemetry/stream",), True),
        ("telemetry/stream/x", ("telemetry/stream",), True),
        ("telemetry/stream/", ("telemetry/stream",), True),
        ("telemetry/events", ("telemetry/stream",), False),
        ("telemetry/streamx", ("telemetry/stream",), False),
        ("telemetry", ("telemetry/stream",), False),
        ("curl", ("fs", "curl"), True),
        ("curlx", ("fs", "curl"), False),
        ("fs/a/b", ("fs", "curl"), True),
        ("fs", (), False),
    ],
)
def test_is_allowlisted_segment_boundary(tail: str, prefixes: tuple[str, ...], covered: bool) -> None:
    assert is_allowlisted(tail, prefixes) is covered


@pytest.mark.parametrize(
    ("tail", "eligible"),
    [
        ("telemetry/events", True),
        ("telemetry/events/", True),
        ("/telemetry//events", True),
        ("telemetry/events/x", False),
        ("telemetry", False),
        ("telemetry/eventsx", False),
        ("telemetry/stream", False),
    ],
)
def test_is_fallback_eligible_exact_after_normalisation(tail: str, eligible: bool) -> None:
    assert is_fallback_eligible(tail, ("telemetry/events",)) is eligible


@pytest.mark.parametrize(
    ("method", "path", "source"),
    [
        ("POST", "/browsers", "create"),
        ("GET", "/browsers", "list"),
        ("GET", "/v1/browsers/", "list"),
        ("GET", "/browsers/abc", "retrieve"),
        ("GET", "/v1/browsers/abc/", "retrieve"),
        ("POST", "/browser_pools/pool-1/acquire", "pool_acquire"),
        ("POST", "/v1/browser_pools/pool-1/acquire", "pool_acquire"),
        ("GET", "/browser_pools/pool-1/acquire", None),
        ("POST", "/browsers/abc", "update"),
        ("PATCH", "/browsers/abc", "update"),
        ("PATCH", "/v1/browsers/abc/", "update"),
        ("PUT", "/browsers", "update"),
        ("DELETE", "/browsers", None),
        ("DELETE", "/browsers/abc", None),
        ("GET", "/browsers/abc/fs", None),
        ("POST", "/browser_pools/pool-1/release", None),
    ],
)
def test_route_source(method: str, path: str, source: str | None) -> None:
    assert route_source(method, path) == source


def test_deleted_browser_key() -> None:
    assert deleted_browser_key("DELETE", "/browsers/abc") == "abc"
    assert deleted_browser_key("DELETE", "/v1/browsers/my%20name/") == "my name"
    assert deleted_browser_key("GET", "/browsers/abc") is None
    assert deleted_browser_key("DELETE", "/browsers") is None
    assert deleted_browser_key("DELETE", "/browsers/abc/fs") is None
    assert deleted_browser_key("DELETE", "/browsers/%20") is None


def test_is_pool_release() -> None:
    assert is_pool_release("POST", "/browser_pools/p/release")
    assert is_pool_release("POST", "/v1/browser_pools/p/release/")
    assert not is_pool_release("GET", "/browser_pools/p/release")
    assert not is_pool_release("POST", "/browser_pools/p/acquire")


def test_parse_list_skips_empty_entries() -> None:
    assert parse_list(" a, ,b,,  c ,") == ["a", "b", "c"]
    assert parse_list("") == []
    assert parse_list(" , ,") == []


def test_parse_path_entries_normalises_and_skips_empty() -> None:
    assert parse_path_entries("curl,, telemetry/stream/ , /fs//x,") == ("curl", "telemetry/stream", "fs/x")
    assert parse_path_entries("") == ()


@pytest.mark.parametrize("bad", ["te lemetry", "fs?x", "fs#x", 'a"b', "a<b", "/", "fs\\x", "a\tb"])
def test_parse_path_entries_rejects_bad_entry_naming_it(bad: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_path_entries(f"curl,{bad},fs")
    assert repr(bad) in str(e.value)


def test_parse_origins() -> None:
    assert parse_origins("https://api.example.test") == (("https", "api.example.test", 443),)
    assert parse_origins(" https://API.Example.test:8443/ ,, http://cp.test ") == (
        ("https", "api.example.test", 8443),
        ("http", "cp.test", 80),
    )


@pytest.mark.parametrize(
    "bad",
    [
        "api.example.test",
        "https://",
        "ftp://api.example.test",
        "https://api.example.test/v1",
        "https://api.example.test?x=1",
        "https://user@api.example.test",
        "https://api.example.test:notaport",
        "https://api.example.test:99999",
    ],
)
def test_parse_origins_rejects_bad_entry_naming_it(bad: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_origins(f"https://ok.test,{bad}")
    assert repr(bad) in str(e.value)


def test_parse_origins_requires_one() -> None:
    with pytest.raises(ValueError):
        parse_origins(" , ")


def test_parse_host_globs() -> None:
    assert parse_host_globs("*.vm.test, ,Proxy.EXAMPLE.test,*") == ("*.vm.test", "proxy.example.test", "*")
    for bad in ("a b", "a/b", "*.vm.test:8443/x"):
        with pytest.raises(ValueError) as e:
            parse_host_globs(f"*.ok.test,{bad}")
        assert repr(bad) in str(e.value)


def test_defaults_pinned() -> None:
    assert paths.DEFAULT_SUBRESOURCES == "curl,telemetry/stream,computer,playwright,process,fs,logs/stream"
    assert paths.SUBRESOURCES_ENV == "KERNEL_BROWSER_ROUTING_SUBRESOURCES"


# --------------------------------------------------------------------------- routes


def test_route_from_object_jwt_field_trimmed_but_not_decoded() -> None:
    obj: dict[object, object] = {
        "session_id": " s1 ",
        "base_url": f" {BASE}/ ",
        "jwt": " tok%2Bx ",
        "name": " my-browser ",
    }
    assert route_from_object(obj) == Route("s1", BASE, "tok%2Bx", "my-browser")


def test_route_from_object_jwt_from_cdp_ws_url_is_query_decoded() -> None:
    obj: dict[object, object] = {
        "session_id": "s1",
        "base_url": BASE,
        "cdp_ws_url": "wss://cdp.vm.test/devtools?a=1&jwt=tok%2Bx",
    }
    route = route_from_object(obj)
    assert route is not None
    assert route.jwt == "tok+x"
    assert route.name is None


def test_route_from_object_jwt_field_wins_over_cdp_ws_url() -> None:
    obj: dict[object, object] = {
        "session_id": "s1",
        "base_url": BASE,
        "jwt": "field",
        "cdp_ws_url": "wss://x.test/?jwt=query",
    }
    assert route_from_object(obj) == Route("s1", BASE, "field")


def test_route_from_object_blank_jwt_field_uses_cdp_ws_url() -> None:
    obj: dict[object, object] = {
        "session_id": "s1",
        "base_url": BASE,
        "jwt": "  ",
        "cdp_ws_url": "wss://x.test/?jwt=query",
    }
    assert route_from_object(obj) == Route("s1", BASE, "query")


@pytest.mark.parametrize(
    "obj",
    [
        {"base_url": BASE, "jwt": JWT},
        {"session_id": "s1", "jwt": JWT},
        {"session_id": "s1", "base_url": BASE},
        {"session_id": 7, "base_url": BASE, "jwt": JWT},
        {"session_id": "s1", "base_url": ["x"], "jwt": JWT},
        {"session_id": "s1", "base_url": BASE, "jwt": 12},
        {"session_id": "s1", "base_url": BASE, "cdp_ws_url": 12},
        {"session_id": "s1", "base_url": BASE, "cdp_ws_url": "wss://x.test/devtools"},
        {"session_id": "s1", "base_url": BASE, "cdp_ws_url": "wss://x.test/?jwt="},
        {"session_id": "  ", "base_url": BASE, "jwt": JWT},
        {"session_id": "s1", "base_url": " / ", "jwt": JWT},
        {"session_id": None, "base_url": None, "jwt": None},
    ],
)
def test_route_from_object_missing_or_mistyped_is_skipped(obj: dict[object, object]) -> None:
    assert route_from_object(obj) is None


def test_route_from_object_mistyped_name_dropped() -> None:
    assert route_from_object({"session_id": "s1", "base_url": BASE, "jwt": JWT, "name": 3}) == Route(
        "s1", BASE, JWT, None
    )


def test_jwt_from_cdp_ws_url() -> None:
    assert jwt_from_cdp_ws_url("wss://x.test/devtools/browser?jwt=abc.def") == "abc.def"
    assert jwt_from_cdp_ws_url("wss://x.test/?jwt=%20pad%20") == "pad"
    assert jwt_from_cdp_ws_url("wss://x.test/?token=abc") is None
    assert jwt_from_cdp_ws_url("wss://[::1/?jwt=abc") is None  # unparseable URL


def routes_of(doc: object) -> list[Route]:
    return list(iter_routes(doc))


def test_routes_from_json_nested_everywhere() -> None:
    doc = {
        "items": [
            {"session_id": "a", "base_url": BASE, "jwt": "ja"},
            {"session_id": "broken", "base_url": 3, "jwt": "x"},
            "garbage",
            None,
            [{"session_id": "b", "base_url": BASE, "cdp_ws_url": "wss://x.test/?jwt=jb"}],
        ],
        "pool": {"lease": {"browser": {"session_id": "c", "base_url": BASE, "jwt": "jc", "name": "named"}}},
        "has_more": False,
    }
    routes = routes_of(doc)
    assert sorted(routes, key=lambda r: r.session_id) == [
        Route("a", BASE, "ja"),
        Route("b", BASE, "jb"),
        Route("c", BASE, "jc", "named"),
    ]


def test_routes_from_json_top_level_list_and_scalars() -> None:
    assert routes_of([{"session_id": "a", "base_url": BASE, "jwt": "j"}]) == [Route("a", BASE, "j")]
    assert routes_of(None) == []
    assert routes_of("text") == []
    assert routes_of(42) == []
    assert routes_of({"data": []}) == []


@pytest.mark.parametrize(
    ("base_url", "reason"),
    [
        (BASE, None),
        ("https://PROXY.IAD.VM.TEST/browser/kernel", None),
        ("http://a.b.vm.test", None),
        ("https://evil.test/browser/kernel", "vm_host"),
        ("https://vm.test.evil.test/", "vm_host"),
        ("https://vm.test/", "vm_host"),  # `*.vm.test` needs a subdomain
        ("ftp://proxy.vm.test/x", "scheme"),
        ("proxy.vm.test/browser", "scheme"),
        ("wss://proxy.vm.test/", "scheme"),
        ("https:///nohost", "scheme"),
    ],
)
def test_refusal_reason(base_url: str, reason: str | None) -> None:
    assert refusal_reason(base_url, ("*.vm.test",)) == reason


def test_refusal_reason_star_allows_any_host_not_any_scheme() -> None:
    assert refusal_reason("https://anything.example", ("*",)) is None
    assert refusal_reason("file:///etc/passwd", ("*",)) == "scheme"


def test_redact() -> None:
    assert redact(JWT) == JWT[:6] + "…"
    assert JWT not in redact(JWT)
    assert redact("") == ""


@pytest.mark.parametrize("secret", ["tok+x", "abcdef"])
def test_redact_short_secret_not_in_clear(secret: str) -> None:
    assert secret not in redact(secret)


# --------------------------------------------------------------------------- RouteCache


def test_route_cache_by_id_and_by_name() -> None:
    cache = RouteCache()
    route = Route("s1", BASE, JWT, "my-browser")
    assert cache.put(route) is True
    assert cache.put(route) is False  # unchanged
    assert cache.get("s1") == route
    assert cache.get(" s1 ") == route
    assert cache.get("my-browser") == route
    assert cache.get("other") is None
    assert len(cache) == 1
    assert list(cache) == [route]


def test_route_cache_put_changed_route_replaces_it() -> None:
    cache = RouteCache()
    cache.put(Route("s1", BASE, "old", "n1"))
    assert cache.put(Route("s1", BASE, "new", "n2")) is True
    assert cache.get("s1") == Route("s1", BASE, "new", "n2")
    assert cache.get("n2") == Route("s1", BASE, "new", "n2")
    assert cache.get("n1") is None  # the old name no longer resolves
    assert len(cache) == 1


@pytest.mark.parametrize("key", ["s1", "my-browser"])
def test_route_cache_evict_drops_both_keys(key: str) -> None:
    cache = RouteCache()
    cache.put(Route("s1", BASE, JWT, "my-browser"))
    cache.put(Route("s2", BASE, JWT))
    assert cache.evict(key) == Route("s1", BASE, JWT, "my-browser")
    assert cache.get("s1") is None
    assert cache.get("my-browser") is None
    assert cache.get("s2") == Route("s2", BASE, JWT)
    assert cache.evict(key) is None
    assert len(cache) == 1


def test_route_cache_says_which_calls_change_it() -> None:
    cache = RouteCache()
    assert cache.put(Route("s1", BASE, JWT, "n")) is True
    assert cache.put(Route("s1", BASE, JWT, "n")) is False  # the same route again: no change
    assert cache.put(Route("s1", BASE, JWT + "x", "n")) is True
    assert cache.evict("n") == Route("s1", BASE, JWT + "x", "n")
    assert cache.evict("n") is None  # nothing left to evict
    assert len(cache) == 0


def test_the_journal_replays_onto_the_snapshot_and_skips_a_torn_line() -> None:
    a, b, c = Route("a", BASE, JWT), Route("b", BASE, JWT), Route("c", BASE, JWT, "n")
    lines = [journal_line("route_cached", c), journal_line("route_evicted", a), '{"put": {"sess']
    routes, unusable = replay_journal([a, b], lines)
    assert (routes, unusable) == ([b, c], 1)


def test_routes_file_round_trip_and_bad_entries() -> None:
    routes = [Route("s1", BASE, JWT, "n"), Route("s2", BASE, JWT)]
    assert load_routes(dump_routes(routes)) == (routes, 0)
    text = json.dumps({"routes": [asdict(routes[0]), {"session_id": 3}, "x"]})
    assert load_routes(text) == (routes[:1], 2)
    for bad in ("[]", '{"routes": {}}', "{", ""):
        with pytest.raises(ValueError):
            load_routes(bad)


def test_route_cache_evicting_stale_owner_of_reused_name_keeps_new_owner() -> None:
    cache = RouteCache()
    cache.put(Route("old", BASE, "j1", "shared-name"))
    cache.put(Route("new", BASE, "j2", "shared-name"))  # the name now resolves to "new"
    assert cache.get("shared-name") == Route("new", BASE, "j2", "shared-name")
    cache.evict("old")  # e.g. the stale browser answered browser_gone
    assert cache.get("shared-name") == Route("new", BASE, "j2", "shared-name")


def test_route_cache_renaming_stale_owner_of_reused_name_keeps_new_owner() -> None:
    cache = RouteCache()
    cache.put(Route("old", BASE, "j1", "shared-name"))
    cache.put(Route("new", BASE, "j2", "shared-name"))
    cache.put(Route("old", BASE, "j1", "renamed"))
    assert cache.get("renamed") == Route("old", BASE, "j1", "renamed")
    assert cache.get("shared-name") == Route("new", BASE, "j2", "shared-name")


# --------------------------------------------------------------------------- fallback


def test_is_browser_gone_true() -> None:
    assert is_browser_gone(b'{"code":"browser_gone","message":"browser not found"}')
    assert is_browser_gone(b' {"code": "browser_gone"} ')


@pytest.mark.parametrize(
    "body",
    [
        None,
        b"",
        b"browser_gone",
        b"<html>404 browser_gone</html>",
        b'[{"code":"browser_gone"}]',
        b'"browser_gone"',
        b'{"code":1}',
        b'{"code":null}',
        b'{"code":["browser_gone"]}',
        b'{"code":"not_found"}',
        b'{"code":"BROWSER_GONE"}',
        b'{"error":{"code":"browser_gone"}}',
        b'{"code":"browser_gone"',
        b"\xff\xfe{",
    ],
)
def test_is_browser_gone_false(body: bytes | None) -> None:
    assert is_browser_gone(body) is False


def _gone_body_of_size(size: int) -> bytes:
    head = b'{"code":"browser_gone","pad":"'
    tail = b'"}'
    body = head + b"x" * (size - len(head) - len(tail)) + tail
    assert len(body) == size
    return body


def test_is_browser_gone_size_bound() -> None:
    assert is_browser_gone(_gone_body_of_size(MAX_GONE_BODY)) is True
    assert is_browser_gone(_gone_body_of_size(MAX_GONE_BODY + 1)) is False


GONE = b'{"code":"browser_gone"}'


@pytest.mark.parametrize(
    ("method", "eligible", "status", "body", "reason"),
    [
        ("GET", True, 404, GONE, None),
        # vm_error first, whatever else holds
        ("POST", False, None, None, "vm_error"),
        ("GET", True, None, GONE, "vm_error"),
        # then not_get
        ("POST", True, 404, GONE, "not_get"),
        ("HEAD", False, 502, None, "not_get"),
        ("DELETE", True, 404, GONE, "not_get"),
        # then not_eligible
        ("GET", False, 404, GONE, "not_eligible"),
        ("GET", False, 502, None, "not_eligible"),
        # then status
        ("GET", True, 403, GONE, "status"),
        ("GET", True, 502, GONE, "status"),
        ("GET", True, 410, GONE, "status"),
        # then not_browser_gone
        ("GET", True, 404, b'{"code":"nope"}', "not_browser_gone"),
        ("GET", True, 404, None, "not_browser_gone"),
    ],
)
def test_no_fallback_reason_order(
    method: str, eligible: bool, status: int | None, body: bytes | None, reason: str | None
) -> None:
    assert no_fallback_reason(method, eligible, status, body) == reason


# --------------------------------------------------------------------------- decisions


def test_redact_url_cuts_jwt_keeps_others() -> None:
    url = f"https://proxy.vm.test/browser/kernel/fs?b=2&jwt={JWT}&a=1&b=3"
    out = redact_url(url)
    assert out == f"https://proxy.vm.test/browser/kernel/fs?b=2&jwt={redact(JWT)}&a=1&b=3"
    assert JWT not in out


def test_redact_url_encoded_key_and_value() -> None:
    out = redact_url("https://x.test/p?j%77t=eyJhbG%2BciOiJSUzI1NiJ9secretpart&x=%2F")
    assert "secretpart" not in out
    assert out.endswith("&x=%2F")
    assert out.startswith("https://x.test/p?j%77t=eyJhbG")


def test_redact_url_without_jwt_unchanged() -> None:
    for url in ("https://x.test/p", "https://x.test/p?a=1&jwtx=keep&xjwt=keep", "https://x.test/p?jwt"):
        assert redact_url(url) == url


def test_markers_are_mitmproxy_emoji_keys() -> None:
    assert set(MARKERS) == {"routed", "passthrough", "fallback", "no_fallback", "reissue"}
    for marker in MARKERS.values():
        assert marker in emoji


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            {"decision": "routed", "vm_host": "proxy.vm.test:8443", "vm_status": 200, "session_id": "s1"},
            "routed to VM proxy.vm.test:8443 (200) [s1]",
        ),
        (
            {"decision": "passthrough", "reason": "no_route", "cp_status": 200},
            "passthrough (no_route), CP 200",
        ),
        (
            {"decision": "fallback", "vm_status": 404, "cp_status": 200, "session_id": "s1"},
            "fallback: VM 404 browser_gone, CP re-issue 200 [s1]",
        ),
        ({"decision": "fallback", "vm_status": 404}, "fallback: VM 404 browser_gone, CP re-issue failed"),
        ({"decision": "no_fallback", "reason": "vm_error"}, "no_fallback (vm_error), VM no answer"),
        ({"decision": "no_fallback", "reason": "status", "vm_status": 502}, "no_fallback (status), VM 502"),
        ({"decision": "reissue", "serves": "f-1", "cp_status": 200}, "reissue for flow f-1, CP 200"),
    ],
)
def test_summary(record: dict[str, Any], expected: str) -> None:
    assert summary(record) == expected


def test_comment_first_line_is_summary_then_fields() -> None:
    record = {
        "decision": "no_fallback",
        "reason": "status",
        "session_id": "s1",
        "method": "GET",
        "url": "https://api.example.test/browsers/s1/fs",
        "vm_status": 502,
        "error": None,
        "cache": [{"decision": "route_evicted", "session_id": "s1", "reason": "delete"}],
    }
    lines = comment(record).splitlines()
    assert lines[0] == summary(record)
    assert "· reason: status" in lines
    assert "· vm_status: 502" in lines
    assert "· cache: route_evicted s1 (delete)" in lines
    assert not any(line.startswith("· error:") for line in lines)


def test_json_lines_log(tmp_path: Path) -> None:
    log = JsonLinesLog()
    log.write({"decision": "lost"})  # off: nothing, no error
    path = tmp_path / "log.jsonl"
    log.open(str(path))
    log.write({"decision": "routed", "n": 1})
    log.write({"decision": "passthrough", "n": 2})
    log.open("")
    log.write({"decision": "lost"})
    log.close()
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [(line["decision"], line["n"]) for line in lines] == [("routed", 1), ("passthrough", 2)]
    assert all(isinstance(line["ts"], float) for line in lines)


def test_json_lines_log_bad_path_raises_and_keeps_old(tmp_path: Path) -> None:
    log = JsonLinesLog()
    good = tmp_path / "good.jsonl"
    log.open(str(good))
    with pytest.raises(OSError):
        log.open(str(tmp_path / "missing-dir" / "x.jsonl"))
    log.write({"decision": "kept"})
    log.close()
    assert json.loads(good.read_text(encoding="utf-8"))["decision"] == "kept"


GONE_JSON = b'{"code":"browser_gone","message":"browser not found"}'


def _encode(body: bytes, coding: str) -> bytes:
    from mitmproxy.net import encoding

    if coding == "deflate-raw":  # deflate without the zlib wrapper, as some servers send it
        compressor = zlib.compressobj(wbits=-15)
        return compressor.compress(body) + compressor.flush()
    return bytes(encoding.encode(body, coding))


@pytest.mark.parametrize("coding", ["gzip", "deflate", "deflate-raw", "br", "zstd"])
def test_decode_bounded_decodes_each_coding_and_refuses_bombs(coding: str) -> None:
    from addon.fallback import decode_bounded

    header = "deflate" if coding == "deflate-raw" else coding
    assert decode_bounded(_encode(GONE_JSON, coding), header) == GONE_JSON
    bomb = _encode(b"\0" * (50 * MAX_GONE_BODY), coding)
    assert len(bomb) < MAX_GONE_BODY  # small on the wire ...
    assert decode_bounded(bomb, header) is None  # ... too big to be browser_gone, never inflated whole


def test_decode_bounded_other_cases() -> None:
    from addon.fallback import decode_bounded

    assert decode_bounded(GONE_JSON, "") == GONE_JSON
    assert decode_bounded(GONE_JSON, "identity") == GONE_JSON
    assert decode_bounded(GONE_JSON, "compress") is None  # unknown coding: not decodable
    assert decode_bounded(b"not gzip", "gzip") is None
    layered = _encode(_encode(GONE_JSON, "gzip"), "br")  # gzip applied first, then br
    assert decode_bounded(layered, "gzip, br") == GONE_JSON


@pytest.mark.parametrize(
    "path",
    [
        "/browsers/s1/telemetry/stream/../../fs/read_file",
        "/browsers/s1/telemetry/stream/%2E%2E/%2e%2e/fs",
        "/browsers/s1/./fs",
        "/browsers/../s1/fs",
    ],
)
def test_dot_segments_never_make_a_subresource_path(path: str) -> None:
    assert parse_subresource_path(path) is None
    assert parse_subresource_path("/browsers/s1/fs/a..b") == SubresourcePath("s1", "fs/a..b")


@pytest.mark.parametrize(
    "value",
    [
        "https://api .onkernel.com",
        "https://*.onkernel.com",
        "https://a!.com",
        "https://h%20x.com",
        "https://host?",
        "https://host#",
        "https://host:0",
        "https://host:",
        "https://user@host",
    ],
)
def test_origins_refused(value: str) -> None:
    with pytest.raises(ValueError, match="not an origin"):
        paths.parse_origins(value)


def test_origins_accepted() -> None:
    assert paths.parse_origins("HTTPS://API.onkernel.com:8443/, http://127.0.0.1:8000 ,http://[::1]") == (
        ("https", "api.onkernel.com", 8443),
        ("http", "127.0.0.1", 8000),
        ("http", "::1", 80),
    )


@pytest.mark.parametrize("value", ["..", "./x", "telemetry/../fs", "tele%zz", "%2e%2e/x"])
def test_path_entries_refused(value: str) -> None:
    with pytest.raises(ValueError, match="not a URL path"):
        paths.parse_path_entries(value)


def test_host_glob_with_a_port_is_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match="without a port"):
        paths.parse_host_globs("proxy.onkernel.com:8443")


@pytest.mark.parametrize(
    "base_url", ["https://p.vm.test/x?a=1", "https://p.vm.test/x#f", "https://user@p.vm.test/x"]
)
def test_base_url_with_query_fragment_or_user_is_refused(base_url: str) -> None:
    assert refusal_reason(base_url, ("*",)) == "base_url"
