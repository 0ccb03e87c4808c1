"""How a CP request path is read (addon/paths.py): the subresource path and its session key,
the allowlist on segment boundaries, the calls that describe, delete or release browsers."""

from __future__ import annotations

import pytest

from addon.paths import (
    SubresourcePath,
    deleted_browser_key,
    is_allowlisted,
    is_pool_release,
    normalize_tail,
    parse_subresource_path,
    route_source,
    split_path,
)


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
def test_a_subresource_path_gives_its_session_key_and_raw_tail(path: str, key: str, tail: str) -> None:
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
def test_other_paths_are_no_subresource_path(path: str) -> None:
    assert parse_subresource_path(path) is None


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


def test_split_path_keeps_query_raw() -> None:
    assert split_path("/browsers/a/fs?path=%2Ftmp&x") == ("/browsers/a/fs", "path=%2Ftmp&x")
    assert split_path("/browsers") == ("/browsers", "")


@pytest.mark.parametrize(
    ("tail", "normalised"),
    [("a/b", "a/b"), ("/a//b/", "a/b"), ("a", "a"), ("//", ""), ("a/%2F/b", "a/%2F/b")],
)
def test_normalize_tail_drops_empty_segments_only(tail: str, normalised: str) -> None:
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
def test_route_source_names_the_calls_that_describe_browsers(
    method: str, path: str, source: str | None
) -> None:
    assert route_source(method, path) == source


def test_a_delete_names_the_decoded_browser_key() -> None:
    assert deleted_browser_key("DELETE", "/browsers/abc") == "abc"
    assert deleted_browser_key("DELETE", "/v1/browsers/my%20name/") == "my name"
    assert deleted_browser_key("GET", "/browsers/abc") is None
    assert deleted_browser_key("DELETE", "/browsers") is None
    assert deleted_browser_key("DELETE", "/browsers/abc/fs") is None
    assert deleted_browser_key("DELETE", "/browsers/%20") is None


def test_a_pool_release_is_a_post_to_release() -> None:
    assert is_pool_release("POST", "/browser_pools/p/release")
    assert is_pool_release("POST", "/v1/browser_pools/p/release/")
    assert not is_pool_release("GET", "/browser_pools/p/release")
    assert not is_pool_release("POST", "/browser_pools/p/acquire")
