"""No input, encoding or size can freeze the proxy, crash a hook or half-route a request.

Defects 1 to 5 of the hardening issue, each through a real mitmdump with the addon: a large
list page, content codings that are not HTTP codings, brotli bombs, strings that cannot be
encoded, a base_url with port 0. The control plane is a scripted loopback server
(`hardening_support.ScriptedServer`) that sends these bodies byte for byte; routed requests
go to the simulator's VM. Defects 6 to 9 are in test_hardening_flows.py. Every test also
holds that no hook of the addon raised meanwhile (`no_hook_raises`).
"""

from __future__ import annotations

import base64
import codecs
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import proxy_options
from hardening_support import (
    AUTH,
    RawAnswer,
    Reply,
    ScriptedServer,
    brotli_bomb,
    browser,
    crashes,
    raw_request,
)
from mitmdump_runner import Mitmdump
from proxy_clients import cache_changes
from simulator import Simulator
from soak import rss_mb

pytestmark = pytest.mark.usefixtures("no_hook_raises")

MB = 1024 * 1024


@pytest.fixture(scope="module")
def proxy(sim: Simulator, cp: ScriptedServer) -> Iterator[Mitmdump]:
    """One mitmdump for the module: the simulator's CP and the scripted CP are both CPs."""
    options = proxy_options(sim, browserrouting_control_plane=f"{sim.cp_url},{cp.url}")
    with Mitmdump(options) as mitmdump:
        yield mitmdump


def teach(proxy: Mitmdump, cp: ScriptedServer, sim: Simulator, sid: str) -> str:
    """The scripted CP describes `sid` as a browser on the simulator's VM (with a live jwt, so
    that a routed request is served); returns the jwt once the route is cached."""
    jwt = sim.jwt_for(sim.create_browser()["session_id"])
    cp.on(f"/browsers/{sid}", Reply.json(browser(sid, sim.base_url, jwt)))
    assert raw_request(proxy, "GET", f"{cp.url}/browsers/{sid}").status == 200
    assert cache_changes(proxy, sid) == ["route_cached"]
    return jwt


def assert_routed(proxy: Mitmdump, cp: ScriptedServer, sim: Simulator, sid: str) -> None:
    """A request for `sid` still goes to the VM (its route is cached), never to the CP."""
    sim.reset()
    got = raw_request(proxy, "GET", f"{cp.url}/browsers/{sid}/fs/read_file?path=/still")
    assert got.status == 200 and got.body.startswith(b"simulated file /still")
    assert cp.seen(f"/browsers/{sid}/fs") == []
    vm = [r for r in sim.stats()["vm"]["requests"] if r["path"].endswith("/fs/read_file")]
    assert len(vm) == 1 and "authorization" not in vm[0]["headers"]


def assert_passes_through(proxy: Mitmdump, cp: ScriptedServer, sid: str) -> None:
    """A request for `sid` goes to the CP exactly as sent: API key and all."""
    target = f"/browsers/{sid}/fs/read_file?path=/cp"
    cp.on(target.partition("?")[0], Reply.json({"served_by": "cp"}))
    got = raw_request(proxy, "GET", f"{cp.url}{target}")
    assert got.status == 200 and json.loads(got.body) == {"served_by": "cp"}
    seen = cp.seen(target)[-1]
    assert seen.target == target and seen.header("Authorization") == [AUTH[1]]
    record = proxy.records("passthrough", sid)[-1]
    assert record["reason"] == "no_route"


def assert_untouched(got: RawAnswer, sent: Reply | None) -> None:
    assert sent is not None
    assert (got.status, got.headers, got.body) == (sent.status, sent.headers, sent.body)


# --------------------------------------------------------------------------- 1. a large list


def large_page(count: int, base_url: str) -> bytes:
    items = [
        {
            "session_id": f"big-{n:05d}-{'x' * 12}",
            "base_url": base_url,
            "cdp_ws_url": f"wss://127.0.0.2:9/browser/cdp?jwt=tok.{n:05d}.{'s' * 120}",
            "created_at": "2025-01-01T00:00:00.000Z",
            "headless": False,
            "stealth": False,
            "memory": "8GiB",
            "region": "us-east",
            "timeout_seconds": 60,
        }
        for n in range(count)
    ]
    return json.dumps(items).encode()


def test_a_page_of_20000_browsers_is_learned_in_seconds_without_stalling_other_clients(
    sim: Simulator, cp: ScriptedServer
) -> None:
    body = large_page(20_000, sim.base_url)
    assert 6 * MB < len(body) < 10 * MB
    cp.on("/v1/browsers", Reply(200, [("Content-Type", "application/json")], body))
    cp.on("/ping", Reply.json({"pong": True}))
    options = proxy_options(sim, browserrouting_control_plane=cp.url)
    with Mitmdump(options) as proxy:  # its own proxy: the log gets 20,000 lines
        outcome: dict[str, Any] = {}

        def fetch_list() -> None:
            try:
                outcome["answer"] = raw_request(proxy, "GET", f"{cp.url}/v1/browsers?limit=20000", timeout=60)
            except OSError as e:
                outcome["error"] = repr(e)

        lister = threading.Thread(target=fetch_list)
        lister.start()
        latencies = []
        while lister.is_alive():  # another client, meanwhile, through the same proxy
            started = time.monotonic()
            try:
                ok = raw_request(proxy, "GET", f"{cp.url}/ping", timeout=10).status == 200
            except OSError:
                ok = False
            latencies.append(time.monotonic() - started if ok else float("inf"))
            time.sleep(0.1)
        lister.join()

        got = outcome.get("answer")
        assert got is not None, outcome.get("error")
        assert got.status == 200 and got.body == body
        assert got.seconds < 15, f"the page took {got.seconds:.1f} s to pass"
        assert latencies and max(latencies) < 3, f"other client's answers took up to {max(latencies):.1f} s"
        lines = [json.loads(line) for line in proxy.log_path.read_text(encoding="utf-8").splitlines()]
        assert sum(r["decision"] == "route_cached" for r in lines) == 20_000
        record = next(r for r in lines if r["decision"] == "passthrough" and "/v1/browsers" in r["url"])
        assert record["cache_changes"] == 20_000
        assert 0 < len(record["cache"]) <= 10
        assert crashes(proxy) == []


# --------------------------------------------------------------------------- 2. non-HTTP codings


def in_coding(coding: str, text: str) -> bytes:
    """`text` as a server naming `coding` would send it: decodable with Python's codecs, so a
    proxy that hands the name to them reads a browser out of it."""
    if coding == "rot13":
        return codecs.encode(text, "rot13").encode()
    if coding == "base64":
        return base64.b64encode(text.encode())
    return text.encode(coding)


NOT_HTTP_CODINGS = ["rot13", "utf-8", "base64"]


@pytest.mark.parametrize("coding", NOT_HTTP_CODINGS)
def test_a_cp_answer_in_a_coding_that_is_not_http_teaches_nothing_and_passes_untouched(
    proxy: Mitmdump, cp: ScriptedServer, sim: Simulator, coding: str
) -> None:
    sid = f"coded-{coding}"
    body = in_coding(coding, json.dumps(browser(sid, sim.base_url)))
    cp.on(
        f"/browsers/{sid}",
        Reply(200, [("Content-Type", "application/json"), ("Content-Encoding", coding)], body),
    )
    got = raw_request(proxy, "GET", f"{cp.url}/browsers/{sid}")
    assert_untouched(got, cp.seen(f"/browsers/{sid}")[-1].reply)
    assert cache_changes(proxy, sid) == []
    assert_passes_through(proxy, cp, sid)


@pytest.mark.parametrize("coding", NOT_HTTP_CODINGS)
def test_a_release_body_in_a_coding_that_is_not_http_evicts_nothing_and_reaches_the_cp_as_sent(
    proxy: Mitmdump, cp: ScriptedServer, sim: Simulator, coding: str
) -> None:
    sid = f"release-{coding}"
    teach(proxy, cp, sim, sid)
    cp.on("/browser_pools/p1/release", Reply(204, [], b""))
    body = in_coding(coding, json.dumps({"session_id": sid}))
    headers = [AUTH, ("Content-Type", "application/json"), ("Content-Encoding", coding)]
    got = raw_request(proxy, "POST", f"{cp.url}/browser_pools/p1/release", headers, body)
    seen = cp.seen("/browser_pools/p1/release")[-1]
    assert_untouched(got, seen.reply)
    assert seen.body == body and seen.header("Content-Encoding") == [coding]
    assert cache_changes(proxy, sid) == ["route_cached"]
    assert_routed(proxy, cp, sim, sid)


# --------------------------------------------------------------------------- 3. brotli bombs


def uninflated_request(
    proxy: Mitmdump, method: str, url: str, headers: list[tuple[str, str]] | None = None, body: bytes = b""
) -> RawAnswer:
    """`raw_request` with a brotli bomb on one side: the answer comes within 5 s and the proxy's
    memory, at its peak and after, grew by less than 200 MB (nothing inflated the bomb)."""
    before = rss_mb(proxy)
    got = raw_request(proxy, method, url, headers, body, timeout=60)
    after = rss_mb(proxy)
    assert got.seconds < 5, f"answered in {got.seconds:.1f} s"
    assert after["VmHWM"] - before["VmHWM"] < 200, (
        f"peak memory grew {after['VmHWM'] - before['VmHWM']:.0f} MB"
    )
    assert after["VmRSS"] - before["VmRSS"] < 200
    return got


def test_a_brotli_bomb_as_a_cp_answer_is_not_inflated(
    proxy: Mitmdump, cp: ScriptedServer, sim: Simulator
) -> None:
    """1.1 GiB of JSON whitespace after a valid browser: read in full, it would teach a route."""
    sid = "bomb-answer"
    bomb = brotli_bomb(json.dumps(browser(sid, sim.base_url)).encode())
    assert len(bomb) < 16 * 1024
    cp.on(
        f"/browsers/{sid}",
        Reply(200, [("Content-Type", "application/json"), ("Content-Encoding", "br")], bomb),
    )
    got = uninflated_request(proxy, "GET", f"{cp.url}/browsers/{sid}")
    assert_untouched(got, cp.seen(f"/browsers/{sid}")[-1].reply)
    assert cache_changes(proxy, sid) == []


def test_a_brotli_bomb_as_a_release_body_is_not_inflated(
    proxy: Mitmdump, cp: ScriptedServer, sim: Simulator
) -> None:
    sid = "bomb-release"
    teach(proxy, cp, sim, sid)
    cp.on("/browser_pools/p2/release", Reply(204, [], b""))
    bomb = brotli_bomb(json.dumps({"session_id": sid}).encode())
    headers = [AUTH, ("Content-Type", "application/json"), ("Content-Encoding", "br")]
    got = uninflated_request(proxy, "POST", f"{cp.url}/browser_pools/p2/release", headers, bomb)
    seen = cp.seen("/browser_pools/p2/release")[-1]
    assert_untouched(got, seen.reply)
    assert seen.body == bomb
    assert cache_changes(proxy, sid) == ["route_cached"]
    assert_routed(proxy, cp, sim, sid)


# --------------------------------------------------------------------------- 4. unencodable strings


@pytest.mark.parametrize("field", ["session_id", "jwt"])
def test_a_route_with_a_lone_surrogate_is_refused_and_the_rest_of_the_list_is_learned(
    proxy: Mitmdump, cp: ScriptedServer, sim: Simulator, field: str
) -> None:
    first, bad, last = f"sur-{field}-a", f"sur-{field}-b", f"sur-{field}-c"
    jwts = {sid: sim.jwt_for(sim.create_browser()["session_id"]) for sid in (first, bad, last)}
    page = [browser(sid, sim.base_url, jwts[sid]) for sid in (first, bad, last)]
    text = json.dumps(page)  # then the JSON escape of a lone surrogate into one field
    marker = json.dumps(page[1][field])[1:-1]
    text = text.replace(f'"{marker}"', f'"{marker}\\ud800"', 1)
    cp.on("/v2/browsers", Reply(200, [("Content-Type", "application/json")], text.encode()))
    got = raw_request(proxy, "GET", f"{cp.url}/v2/browsers?field={field}")
    assert got.status == 200 and got.body == text.encode()

    log_text = proxy.log_path.read_bytes().decode("utf-8")  # strict: the log stays UTF-8
    records = [json.loads(line) for line in log_text.splitlines()]
    refused = [r for r in records if r["decision"] == "route_refused" and r["session_id"].startswith(bad)]
    assert [r["reason"] for r in refused] == ["encoding"]
    assert cache_changes(proxy, first) == ["route_cached"]
    assert cache_changes(proxy, last) == ["route_cached"]  # learned after the refused one
    assert_routed(proxy, cp, sim, last)
    if field == "jwt":  # never half-routed: the session's requests go to the CP as sent
        assert cache_changes(proxy, bad) == ["route_refused"]
        assert_passes_through(proxy, cp, bad)


# --------------------------------------------------------------------------- 5. port 0


@pytest.mark.parametrize("port", [":0", ":"])
def test_a_base_url_with_port_0_or_none_is_refused_and_its_session_passes_through(
    proxy: Mitmdump, cp: ScriptedServer, sim: Simulator, port: str
) -> None:
    sid = f"port{port.strip(':') or '-empty'}"
    jwt = sim.jwt_for(sim.create_browser()["session_id"])
    cp.on(f"/browsers/{sid}", Reply.json(browser(sid, f"https://{sim.vm_host}{port}/browser/kernel", jwt)))
    assert raw_request(proxy, "GET", f"{cp.url}/browsers/{sid}").status == 200
    refused = proxy.records("route_refused", sid)
    assert [r["reason"] for r in refused] == ["base_url"]
    assert cache_changes(proxy, sid) == ["route_refused"]
    assert_passes_through(proxy, cp, sid)
