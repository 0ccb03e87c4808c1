"""Defects 6 to 9 of the hardening issue: killed flows, VM redirects, browser updates and
script reloads, through a real mitmdump with the addon. What happens to the addon's per-flow
state on every ending is counted with taddons in test_hardening_state.py. Every test also
holds that no hook of the addon raised meanwhile (`no_hook_raises`).
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from conftest import proxy_options
from hardening_support import (
    AUTH,
    Reply,
    ScriptedServer,
    browser,
    crashes,
    raw_request,
)
from mitmdump_runner import Mitmdump
from proxy_clients import cache_changes, flow_records, new_browser, vm_hits, wait_until
from simulator import Simulator

pytestmark = pytest.mark.usefixtures("no_hook_raises")

ADDON = Path(__file__).resolve().parent.parent / "addon"

KILLER = """
from mitmproxy import http

def request(flow: http.HTTPFlow) -> None:
    if "kill-by-script" in flow.request.path:
        flow.kill()
"""
REDIRECT_JWT = "tok+redirect/jwt="


@pytest.fixture(scope="module")
def vm() -> Iterator[ScriptedServer]:
    """A plain-HTTP VM of our own, on another loopback address: it can redirect."""
    with ScriptedServer("127.0.0.3") as server:
        yield server


@pytest.fixture(scope="module")
def proxy(sim: Simulator, cp: ScriptedServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mitmdump]:
    killer = tmp_path_factory.mktemp("killer") / "killer.py"
    killer.write_text(KILLER)
    options = proxy_options(
        sim,
        browserrouting_control_plane=f"{sim.cp_url},{cp.url}",
        browserrouting_vm_hosts="127.0.0.2,127.0.0.3",
        block_list=":~u kill-by-blocklist:444",
    )
    with Mitmdump(options, extra_args=("-s", str(killer))) as mitmdump:
        yield mitmdump


# --------------------------------------------------------------------------- 6. killed flows


@pytest.mark.parametrize("how", ["kill-by-blocklist", "kill-by-script"])
def test_a_killed_routed_get_is_decided_no_fallback_vm_error_not_routed(
    proxy: Mitmdump, fresh_sim: Simulator, how: str
) -> None:
    sid = new_browser(proxy, fresh_sim)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        raw_request(proxy, "GET", f"{fresh_sim.cp_url}/browsers/{sid}/fs/{how}")
    records = flow_records(proxy, sid, 1, url_part=how)
    assert [(r["decision"], r["reason"]) for r in records] == [("no_fallback", "vm_error")]
    assert records[0]["error"]
    assert vm_hits(fresh_sim, how) == []


def test_a_routed_get_whose_client_leaves_is_decided_no_fallback_vm_error(
    proxy: Mitmdump, fresh_sim: Simulator
) -> None:
    sid = new_browser(proxy, fresh_sim)
    fresh_sim.set_latency(vm=1.0)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            target = f"{fresh_sim.cp_url}/browsers/{sid}/fs/read_file?path=/leaving"
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n{AUTH[0]}: {AUTH[1]}\r\n\r\n".encode())
            assert wait_until(lambda: len(vm_hits(fresh_sim, "read_file")) == 1)
    finally:
        fresh_sim.set_latency(vm=0)
    records = flow_records(proxy, sid, 1, url_part="leaving")
    assert [(r["decision"], r["reason"]) for r in records] == [("no_fallback", "vm_error")]


# --------------------------------------------------------------------------- 7. VM redirects


def learn_redirecting_route(proxy: Mitmdump, cp: ScriptedServer, vm: ScriptedServer, sid: str) -> None:
    cp.on(f"/browsers/{sid}", Reply.json(browser(sid, f"{vm.url}/browser/kernel", REDIRECT_JWT)))
    assert raw_request(proxy, "GET", f"{cp.url}/browsers/{sid}").status == 200
    assert cache_changes(proxy, sid) == ["route_cached"]


@pytest.mark.parametrize("prefix", ["", "/v1"])
def test_a_vm_redirect_under_base_url_is_followed_on_the_vm_and_the_cp_never_sees_the_jwt(
    proxy: Mitmdump, cp: ScriptedServer, vm: ScriptedServer, prefix: str
) -> None:
    sid = f"redirect{prefix.replace('/', '-')}"
    learn_redirecting_route(proxy, cp, vm, sid)
    jwt = quote(REDIRECT_JWT, safe="")
    vm.on(
        "/browser/kernel/fs/start",
        Reply(307, [("Location", f"/browser/kernel/fs/landed?x=1&jwt={jwt}")], b""),
    )
    vm.on("/browser/kernel/fs/landed", Reply(200, [("Content-Type", "text/plain")], b"landed on the VM"))
    before = len(vm.seen())
    with httpx.Client(proxy=proxy.url, headers=[AUTH], follow_redirects=True, timeout=10) as client:
        got = client.get(f"{cp.url}{prefix}/browsers/{sid}/fs/start")
    assert got.status_code == 200 and got.content == b"landed on the VM"
    assert got.history[0].headers["location"] == f"{prefix}/browsers/{sid}/fs/landed?x=1"
    on_vm = vm.seen()[before:]
    assert [s.path for s in on_vm] == ["/browser/kernel/fs/start", "/browser/kernel/fs/landed"]
    assert on_vm[1].query == f"x=1&jwt={jwt}" and on_vm[1].header("Authorization") == []
    assert cp.seen("/fs/") == [] and not any("jwt" in s.target for s in cp.seen())
    assert [r["decision"] for r in flow_records(proxy, sid, 2, url_part="/fs/")] == ["routed", "routed"]


@pytest.mark.parametrize(
    ("header", "status", "sent", "expected"),
    [
        ("Location", 302, "/elsewhere/page?jwt={jwt}&y=2", "{vm}/elsewhere/page?y=2"),
        ("Location", 303, "../../other?y=2&jwt={jwt}#top", "{vm}/browser/other?y=2#top"),
        (
            "Location",
            302,
            "http://127.0.0.9:1/away?jwt=someone-elses",
            "http://127.0.0.9:1/away?jwt=someone-elses",
        ),
        ("Content-Location", 200, "/browser/kernel/fs/copy?jwt={jwt}", "/browsers/{sid}/fs/copy"),
        ("Content-Location", 200, "/elsewhere?jwt={jwt}", "{vm}/elsewhere"),
    ],
)
def test_a_routed_answers_location_never_points_at_the_cp_with_the_jwt(
    proxy: Mitmdump,
    cp: ScriptedServer,
    vm: ScriptedServer,
    header: str,
    status: int,
    sent: str,
    expected: str,
) -> None:
    sid = f"location-{header}-{status}-{len(sent)}"
    learn_redirecting_route(proxy, cp, vm, sid)
    fill = {"jwt": quote(REDIRECT_JWT, safe=""), "vm": vm.url, "sid": sid}
    vm.on("/browser/kernel/fs/answer", Reply(status, [(header, sent.format(**fill))], b"body"))
    got = raw_request(proxy, "GET", f"{cp.url}/browsers/{sid}/fs/answer")
    assert got.status == status and got.body == b"body"
    assert got.header(header) == [expected.format(**fill)]


# --------------------------------------------------------------------------- 8. browser updates


def test_a_patch_answer_with_the_browser_teaches_its_route(proxy: Mitmdump, fresh_sim: Simulator) -> None:
    sid = fresh_sim.create_browser()["session_id"]  # made outside the proxy: unknown to it
    got = raw_request(
        proxy, "PATCH", f"{fresh_sim.cp_url}/browsers/{sid}",
        [AUTH, ("Content-Type", "application/json")], b'{"timeout_seconds": 120}',
    )  # fmt: skip
    assert got.status == 200
    assert [r["reason"] for r in proxy.records("route_cached", sid)] == ["update"]
    fresh_sim.reset()
    assert raw_request(proxy, "GET", f"{fresh_sim.cp_url}/browsers/{sid}/fs/read_file?path=/p").status == 200
    assert len(vm_hits(fresh_sim, "read_file")) == 1


@pytest.mark.parametrize("path", ["/browsers/{sid}", "/v1/browsers/{sid}", "/browsers"])
def test_a_delete_answer_with_a_browser_never_teaches_its_route(
    proxy: Mitmdump, cp: ScriptedServer, sim: Simulator, path: str
) -> None:
    sid = f"deleted-{len(path)}"
    target = path.format(sid=sid)
    cp.on(target, Reply.json(browser(sid, sim.base_url)))
    got = raw_request(proxy, "DELETE", f"{cp.url}{target}")
    sent = cp.seen(target)[-1].reply
    assert sent is not None and (got.status, got.body) == (200, sent.body)
    assert cache_changes(proxy, sid) == []


# --------------------------------------------------------------------------- 9. script reloads


def entry_copy(root: Path) -> Path:
    """The addon package with its entry script as a file of its own: touching it reloads only
    this proxy, not every mitmdump that runs the checkout's script. The rest are links."""
    package = root / "addon"
    package.mkdir(parents=True)
    for entry in ADDON.iterdir():
        if entry.name == "browser_routing.py":
            shutil.copy2(entry, package / entry.name)
        elif entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    return package / "browser_routing.py"


def test_routes_and_a_pending_fallback_survive_an_edit_of_the_script(sim: Simulator, tmp_path: Path) -> None:
    entry = entry_copy(tmp_path)
    mitmdump = Mitmdump(proxy_options(sim), with_addon=False, extra_args=("-s", str(entry)))
    mitmdump.options["browserrouting_log"] = str(mitmdump.log_path)
    with mitmdump as proxy:
        kept, dying = new_browser(proxy, sim), new_browser(proxy, sim)
        sim.reset()
        sim.kill_on_vm(dying)
        sim.set_latency(vm=4.0)
        pending: dict[str, Any] = {}

        def read_events() -> None:
            with httpx.Client(proxy=proxy.url, headers=[AUTH], timeout=30) as client:
                pending["answer"] = client.get(f"{sim.cp_url}/browsers/{dying}/telemetry/events")

        reader = threading.Thread(target=read_events)
        reader.start()
        assert wait_until(lambda: len(vm_hits(sim, "telemetry/events")) == 1)
        sim.set_latency(vm=0)  # only the pending request is held
        stat = entry.stat()
        os.utime(entry, (stat.st_atime, stat.st_mtime + 5))

        def loaded_twice() -> bool:
            return sum("Loading script" in line and str(entry) in line for line in proxy.output) == 2

        assert wait_until(loaded_twice, timeout=10), "mitmproxy did not reload the script"
        assert reader.is_alive(), "the fallback must still be pending when the script reloads"

        got = raw_request(proxy, "GET", f"{sim.cp_url}/browsers/{kept}/fs/read_file?path=/after")
        assert got.status == 200 and got.body.startswith(b"simulated file /after")
        assert proxy.records("routed", kept)[-1]["url"].endswith("path=/after")
        reader.join(30)
        answer = pending["answer"]
        assert answer.status_code == 200 and answer.json()[0]["id"].startswith("cp-")
        assert [r["cp_status"] for r in proxy.records("fallback", dying)] == [200]
        assert crashes(proxy) == []
