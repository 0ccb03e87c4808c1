"""Route commands, the routes file and browser names in a real mitmdump / mitmweb."""

from __future__ import annotations

import json
import signal
import socket
import stat
from pathlib import Path
from typing import Any

import httpx
from conftest import API_KEY, proxy_options
from mitmdump_runner import Mitmdump
from simulator import Simulator

AUTH = {"Authorization": f"Bearer {API_KEY}"}
XSRF = "5e1f0c0ffee5e1f0"


def through(proxy: Mitmdump) -> httpx.Client:
    return httpx.Client(proxy=proxy.url, headers=AUTH, timeout=10)


def vm_hits(sim: Simulator, path_part: str) -> int:
    return sum(path_part in r["path"] for r in sim.stats()["vm"]["requests"] if not r["via_cp"])


def interrupt(proxy: Mitmdump) -> str:
    """Stop mitmdump as a user does (Ctrl-C) and return everything it printed."""
    assert proxy.process is not None
    proxy.process.send_signal(signal.SIGINT)
    assert proxy.process.wait(10) == 0
    return "".join(proxy.output)


def test_routes_survive_a_restart_and_the_summary_is_logged_at_exit(
    fresh_sim: Simulator, tmp_path: Path
) -> None:
    routes_file = tmp_path / "routes.json"
    options = proxy_options(fresh_sim, browserrouting_routes_file=str(routes_file))
    with Mitmdump(options) as first:
        with through(first) as c:
            browser = c.post(f"{fresh_sim.cp_url}/browsers", json={"name": "qa-alpha"}).json()
            assert c.get(
                f"{fresh_sim.cp_url}/browsers/qa-alpha/fs/read_file", params={"path": "/x"}
            ).is_success
        printed = interrupt(first)
    assert (
        'browserrouting summary: {"decisions": {"passthrough": 1, "route_cached": 1, "routed": 1}' in printed
    )
    assert stat.S_IMODE(routes_file.stat().st_mode) == 0o600
    assert fresh_sim.jwt_for(browser["session_id"]) not in printed

    fresh_sim.reset()
    with Mitmdump(options) as second, through(second) as c:  # nothing learned since the restart
        assert c.get(f"{fresh_sim.cp_url}/browsers/qa-alpha/telemetry/events").status_code == 200
        assert c.get(f"{fresh_sim.cp_url}/browsers/{browser['session_id']}/fs/read_file?path=/y").is_success
        assert [r["decision"] for r in second.records(session_id=browser["session_id"], wait_for=3)] == [
            "route_cached",
            "routed",
            "routed",
        ]
    assert vm_hits(fresh_sim, "telemetry/events") == 1 and vm_hits(fresh_sim, "fs/read_file") == 1
    assert fresh_sim.stats()["cp"]["count"] == 0


def test_a_corrupt_routes_file_is_reported_and_the_proxy_keeps_working(
    sim: Simulator, tmp_path: Path
) -> None:
    routes_file = tmp_path / "routes.json"
    routes_file.write_text('{"routes": [')
    with (
        Mitmdump(proxy_options(sim, browserrouting_routes_file=str(routes_file))) as proxy,
        through(proxy) as c,
    ):
        assert c.get(f"{sim.cp_url}/browsers").status_code == 200
        assert any("browserrouting_routes_file: ignoring" in line for line in proxy.output)
        assert proxy.process is not None and proxy.process.poll() is None


def test_delete_by_name_evicts_the_id_too(fresh_sim: Simulator, proxy: Mitmdump) -> None:
    with through(proxy) as c:
        sid = c.post(f"{fresh_sim.cp_url}/browsers", json={"name": "qa-beta"}).json()["session_id"]
        fresh_sim.reset()
        assert c.get(f"{fresh_sim.cp_url}/browsers/qa-beta/fs/read_file?path=/z").is_success
        assert vm_hits(fresh_sim, "fs/read_file") == 1
        assert c.delete(f"{fresh_sim.cp_url}/browsers/qa-beta").status_code == 204
        for key in ("qa-beta", sid):
            c.get(f"{fresh_sim.cp_url}/browsers/{key}/fs/read_file?path=/z")
    assert vm_hits(fresh_sim, "fs/read_file") == 1, "after the delete nothing reaches the VM"
    passthroughs = proxy.records("passthrough", wait_for=2)
    assert [r["reason"] for r in passthroughs if r["session_id"] in ("qa-beta", sid)][-2:] == ["no_route"] * 2


def call(web: Mitmdump, session: httpx.Client, command: str, *arguments: str) -> Any:
    """A command through mitmweb's HTTP API, as its command bar sends it (with the xsrf
    cookie and header pair that mitmweb's page sends)."""
    got = session.post(
        f"/commands/{command}", json={"arguments": list(arguments)}, headers={"X-XSRFToken": XSRF}
    )
    got = got.json()
    if "error" in got:
        raise AssertionError(got["error"])
    return got["value"]


def test_commands_from_mitmweb(sim: Simulator) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        web_port = s.getsockname()[1]
    options = proxy_options(sim, web_host="127.0.0.1", web_port=str(web_port), web_open_browser="false")
    with Mitmdump(options, tool="mitmweb") as web, through(web) as c:
        sid = c.post(f"{sim.cp_url}/browsers", json={}).json()["session_id"]
        base = httpx.URL(web.web_url)
        with httpx.Client(base_url=f"{base.scheme}://{base.host}:{base.port}", trust_env=False) as ui:
            ui.get("/", params={"token": base.params["token"]})  # the auth cookie
            ui.cookies.set("_mitmproxy_xsrf", XSRF)
            routes = json.loads(call(web, ui, "browserrouting.routes"))
            assert [(r["session_id"], r["jwt"].endswith("…")) for r in routes] == [(sid, True)]
            call(web, ui, "browserrouting.add", "manual-1", sim.base_url, sim.jwt_for(sid))
            assert c.get(f"{sim.cp_url}/browsers/manual-1/fs/read_file?path=/m").is_success
            call(web, ui, "browserrouting.evict", sid)
            call(web, ui, "browserrouting.clear")
            assert json.loads(call(web, ui, "browserrouting.routes")) == []
            summary = json.loads(call(web, ui, "browserrouting.summary"))
    assert summary["decisions"]["routed"] == 1 and summary["routes"] == 0
    assert summary["decisions"]["route_evicted"] == 2
    assert summary["outbound"][sim.base_url.split("/")[2]] == 1
