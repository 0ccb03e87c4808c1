"""The route cache's pure parts (addon/route_cache.py): a route from a browser object, routes from any
JSON, the refusal of a base_url, and RouteCache by id and by name."""

from __future__ import annotations

import pytest
from known import JWT, VM_BASE

from addon.route_cache import (
    Route,
    RouteCache,
    iter_routes,
    jwt_from_cdp_ws_url,
    refusal_reason,
    route_from_object,
)

# --------------------------------------------------------------------------- a route from a browser object


def test_route_from_object_jwt_field_trimmed_but_not_decoded() -> None:
    obj: dict[object, object] = {
        "session_id": " s1 ",
        "base_url": f" {VM_BASE}/ ",
        "jwt": " tok%2Bx ",
        "name": " my-browser ",
    }
    assert route_from_object(obj) == Route("s1", VM_BASE, "tok%2Bx", "my-browser")


def test_route_from_object_jwt_from_cdp_ws_url_is_query_decoded() -> None:
    obj: dict[object, object] = {
        "session_id": "s1",
        "base_url": VM_BASE,
        "cdp_ws_url": "wss://cdp.vm.test/devtools?a=1&jwt=tok%2Bx",
    }
    route = route_from_object(obj)
    assert route is not None
    assert route.jwt == "tok+x"
    assert route.name is None


@pytest.mark.parametrize(
    ("jwt_field", "jwt"),
    [("field", "field"), ("  ", "query")],
    ids=["a_jwt_field_wins_over_cdp_ws_url", "a_blank_jwt_field_leaves_cdp_ws_urls"],
)
def test_route_from_object_takes_the_jwt_field_else_the_cdp_ws_urls(jwt_field: str, jwt: str) -> None:
    obj: dict[object, object] = {
        "session_id": "s1",
        "base_url": VM_BASE,
        "jwt": jwt_field,
        "cdp_ws_url": "wss://x.test/?jwt=query",
    }
    assert route_from_object(obj) == Route("s1", VM_BASE, jwt)


@pytest.mark.parametrize(
    "obj",
    [
        {"base_url": VM_BASE, "jwt": JWT},
        {"session_id": "s1", "jwt": JWT},
        {"session_id": "s1", "base_url": VM_BASE},
        {"session_id": 7, "base_url": VM_BASE, "jwt": JWT},
        {"session_id": "s1", "base_url": ["x"], "jwt": JWT},
        {"session_id": "s1", "base_url": VM_BASE, "jwt": 12},
        {"session_id": "s1", "base_url": VM_BASE, "cdp_ws_url": 12},
        {"session_id": "s1", "base_url": VM_BASE, "cdp_ws_url": "wss://x.test/devtools"},
        {"session_id": "s1", "base_url": VM_BASE, "cdp_ws_url": "wss://x.test/?jwt="},
        {"session_id": "  ", "base_url": VM_BASE, "jwt": JWT},
        {"session_id": "s1", "base_url": " / ", "jwt": JWT},
        {"session_id": None, "base_url": None, "jwt": None},
    ],
)
def test_route_from_object_missing_or_mistyped_is_skipped(obj: dict[object, object]) -> None:
    assert route_from_object(obj) is None


def test_route_from_object_mistyped_name_dropped() -> None:
    assert route_from_object({"session_id": "s1", "base_url": VM_BASE, "jwt": JWT, "name": 3}) == Route(
        "s1", VM_BASE, JWT, None
    )


def test_the_jwt_is_read_from_the_cdp_ws_url_query() -> None:
    assert jwt_from_cdp_ws_url("wss://x.test/devtools/browser?jwt=abc.def") == "abc.def"
    assert jwt_from_cdp_ws_url("wss://x.test/?jwt=%20pad%20") == "pad"
    assert jwt_from_cdp_ws_url("wss://x.test/?token=abc") is None
    assert jwt_from_cdp_ws_url("wss://[::1/?jwt=abc") is None  # unparseable URL


def routes_of(doc: object) -> list[Route]:
    return list(iter_routes(doc))


def test_routes_from_json_nested_everywhere() -> None:
    doc = {
        "items": [
            {"session_id": "a", "base_url": VM_BASE, "jwt": "ja"},
            {"session_id": "broken", "base_url": 3, "jwt": "x"},
            "garbage",
            None,
            [{"session_id": "b", "base_url": VM_BASE, "cdp_ws_url": "wss://x.test/?jwt=jb"}],
        ],
        "pool": {
            "lease": {"browser": {"session_id": "c", "base_url": VM_BASE, "jwt": "jc", "name": "named"}}
        },
        "has_more": False,
    }
    routes = routes_of(doc)
    assert sorted(routes, key=lambda r: r.session_id) == [
        Route("a", VM_BASE, "ja"),
        Route("b", VM_BASE, "jb"),
        Route("c", VM_BASE, "jc", "named"),
    ]


def test_routes_from_json_top_level_list_and_scalars() -> None:
    assert routes_of([{"session_id": "a", "base_url": VM_BASE, "jwt": "j"}]) == [Route("a", VM_BASE, "j")]
    assert routes_of(None) == []
    assert routes_of("text") == []
    assert routes_of(42) == []
    assert routes_of({"data": []}) == []


# --------------------------------------------------------------------------- refusal


@pytest.mark.parametrize(
    ("base_url", "reason"),
    [
        (VM_BASE, None),
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
def test_a_base_url_off_the_vm_hosts_or_not_http_is_refused(base_url: str, reason: str | None) -> None:
    assert refusal_reason(base_url, ("*.vm.test",)) == reason


def test_refusal_reason_star_allows_any_host_not_any_scheme() -> None:
    assert refusal_reason("https://anything.example", ("*",)) is None
    assert refusal_reason("file:///etc/passwd", ("*",)) == "scheme"


@pytest.mark.parametrize(
    "base_url", ["https://p.vm.test/x?a=1", "https://p.vm.test/x#f", "https://user@p.vm.test/x"]
)
def test_base_url_with_query_fragment_or_user_is_refused(base_url: str) -> None:
    assert refusal_reason(base_url, ("*",)) == "base_url"


# --------------------------------------------------------------------------- RouteCache


def test_route_cache_by_id_and_by_name() -> None:
    cache = RouteCache()
    route = Route("s1", VM_BASE, JWT, "my-browser")
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
    cache.put(Route("s1", VM_BASE, "old", "n1"))
    assert cache.put(Route("s1", VM_BASE, "new", "n2")) is True
    assert cache.get("s1") == Route("s1", VM_BASE, "new", "n2")
    assert cache.get("n2") == Route("s1", VM_BASE, "new", "n2")
    assert cache.get("n1") is None  # the old name no longer resolves
    assert len(cache) == 1


@pytest.mark.parametrize("key", ["s1", "my-browser"])
def test_route_cache_evict_drops_both_keys(key: str) -> None:
    cache = RouteCache()
    cache.put(Route("s1", VM_BASE, JWT, "my-browser"))
    cache.put(Route("s2", VM_BASE, JWT))
    assert cache.evict(key) == Route("s1", VM_BASE, JWT, "my-browser")
    assert cache.get("s1") is None
    assert cache.get("my-browser") is None
    assert cache.get("s2") == Route("s2", VM_BASE, JWT)
    assert cache.evict(key) is None
    assert len(cache) == 1


def test_route_cache_says_which_calls_change_it() -> None:
    cache = RouteCache()
    assert cache.put(Route("s1", VM_BASE, JWT, "n")) is True
    assert cache.put(Route("s1", VM_BASE, JWT, "n")) is False  # the same route again: no change
    assert cache.put(Route("s1", VM_BASE, JWT + "x", "n")) is True
    assert cache.evict("n") == Route("s1", VM_BASE, JWT + "x", "n")
    assert cache.evict("n") is None  # nothing left to evict
    assert len(cache) == 0


def test_route_cache_evicting_stale_owner_of_reused_name_keeps_new_owner() -> None:
    cache = RouteCache()
    cache.put(Route("old", VM_BASE, "j1", "shared-name"))
    cache.put(Route("new", VM_BASE, "j2", "shared-name"))  # the name now resolves to "new"
    assert cache.get("shared-name") == Route("new", VM_BASE, "j2", "shared-name")
    cache.evict("old")  # e.g. the stale browser answered browser_gone
    assert cache.get("shared-name") == Route("new", VM_BASE, "j2", "shared-name")


def test_route_cache_renaming_stale_owner_of_reused_name_keeps_new_owner() -> None:
    cache = RouteCache()
    cache.put(Route("old", VM_BASE, "j1", "shared-name"))
    cache.put(Route("new", VM_BASE, "j2", "shared-name"))
    cache.put(Route("old", VM_BASE, "j1", "renamed"))
    assert cache.get("renamed") == Route("old", VM_BASE, "j1", "renamed")
    assert cache.get("shared-name") == Route("new", VM_BASE, "j2", "shared-name")
