"""The entry script's wiring, the route commands (`browserrouting.routes`, `.add`, `.evict`,
`.clear`, `.summary`) and the routes file (private, journaled, restored, checked): with taddons,
then in a real mitmdump / mitmweb."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path
from typing import Any

import pytest
from addon_harness import Wired, decision, wired
from conftest import proxy_options
from known import CP_HOST, JWT, ROOT, VM_BASE
from mitmdump_runner import Mitmdump
from mitmproxy import exceptions
from mitmproxy.addons.script import load_script
from proxy_clients import client, interrupt, vm_hits
from simulator import Simulator

from addon.audit.watcher import RoutingAudit
from addon.commands import RouteCommands
from addon.fallback import ControlPlaneFallback
from addon.faults.responder import FaultInjection
from addon.hooks import BrowserRouting
from addon.recorder import DecisionRecorder
from addon.route_cache import Route, dump_routes, journal_line, load_routes, replay_journal
from addon.router import Router
from addon.routes_file import RoutesFile


def test_entry_script_wires_the_addons_in_hook_order() -> None:
    module = load_script(str(ROOT / "addon" / "browser_routing.py"))
    assert module is not None
    (parts,) = module.addons  # one addon: mitmproxy walks every addon for every event
    assert not hasattr(parts, "addons"), "nothing more to walk on every event; load registers the commands"
    assert parts.request is None, "no `request` hook to call while no flow waits for an injected answer"
    router, routes_file, fallback, audit, injector, recorder = parts.parts
    commands = parts.commands
    assert isinstance(router, Router)
    assert isinstance(routes_file, RoutesFile)
    assert isinstance(fallback, ControlPlaneFallback)
    assert isinstance(audit, RoutingAudit)
    assert isinstance(injector, FaultInjection)
    assert isinstance(commands, RouteCommands)
    assert isinstance(recorder, DecisionRecorder)
    assert router.recorder is recorder and router.injector is injector
    assert routes_file.router is router and commands.router is router
    assert fallback.router is router and audit.router is router and audit.fallback is fallback
    assert fallback.recorder is recorder and commands.recorder is recorder and audit.recorder is recorder
    assert audit.injector is injector
    assert isinstance(parts, BrowserRouting) and parts.router is router
    assert commands.injector is injector and commands.audit is audit


# --------------------------------------------------------------------------- commands


async def test_routes_command_lists_the_cache_with_jwts_redacted(script: Wired) -> None:
    await script.create("s1", "alpha")
    routes = json.loads(script.tctx.command(script.commands.routes))
    assert routes == [{"session_id": "s1", "name": "alpha", "base_url": VM_BASE, "jwt": JWT[:6] + "…"}]


async def test_add_command_routes_and_applies_the_vm_host_check(script: Wired) -> None:
    script.tctx.command(script.commands.add, "s9", VM_BASE + "/", JWT)
    assert decision(await script.send("GET", "/browsers/s9/fs/read_file"))[0] == "routed"
    with pytest.raises(exceptions.CommandError, match="vm_host"):
        script.tctx.command(script.commands.add, "s8", "https://evil.example.com/browser/kernel", JWT)
    with pytest.raises(exceptions.CommandError, match="scheme"):
        script.tctx.command(script.commands.add, "s8", "ftp://proxy.vm.test/x", JWT)
    with pytest.raises(exceptions.CommandError, match="empty"):
        script.tctx.command(script.commands.add, "s8", VM_BASE, " ")
    assert [r["session_id"] for r in json.loads(script.tctx.command(script.commands.routes))] == ["s9"]


async def test_evict_and_clear_commands_drop_routes(script: Wired) -> None:
    await script.create("s1", "alpha")
    await script.create("s2")
    script.tctx.command(script.commands.evict, "alpha")
    assert decision(await script.send("GET", "/browsers/s1/fs/x")) == ("passthrough", "no_route")
    with pytest.raises(exceptions.CommandError, match="no route"):
        script.tctx.command(script.commands.evict, "alpha")
    script.tctx.command(script.commands.clear)
    assert json.loads(script.tctx.command(script.commands.routes)) == []
    assert decision(await script.send("GET", "/browsers/s2/fs/x")) == ("passthrough", "no_route")


async def test_summary_counts_decisions_and_outbound_hosts(
    script: Wired, caplog: pytest.LogCaptureFixture
) -> None:
    await script.create("s1")
    await script.send("GET", "/browsers/s1/fs/a")
    await script.send("GET", "/browsers/s1/fs/b")
    await script.send("GET", "/browsers/s2/fs/a")
    summary = json.loads(script.tctx.command(script.commands.summary))
    assert summary == {
        "decisions": {"passthrough": 2, "route_cached": 1, "routed": 2},
        "outbound": {f"{CP_HOST}:443": 2, "proxy.iad.vm.test:8443": 2},
        "routes": 1,
    }
    replayed = await script.send("GET", "/browsers/s1/fs/c", replay=True)
    assert decision(replayed) == ("routed", None)
    assert json.loads(script.tctx.command(script.commands.summary))["outbound"]["proxy.iad.vm.test:8443"] == 2
    with caplog.at_level(logging.INFO):
        script.commands.done()
    assert "browserrouting summary:" in caplog.text and '"routed": 3' in caplog.text


def test_route_commands_work_from_mitmwebs_command_bar(sim: Simulator) -> None:
    """Each command through mitmweb's HTTP API, as its command bar sends it (`Mitmdump.command`)."""
    with Mitmdump(proxy_options(sim), tool="mitmweb") as web, client(web) as c:
        sid = c.post(f"{sim.cp_url}/browsers", json={}).json()["session_id"]
        routes = json.loads(web.command("browserrouting.routes"))
        assert [(r["session_id"], r["jwt"].endswith("…")) for r in routes] == [(sid, True)]
        web.command("browserrouting.add", "manual-1", sim.base_url, sim.jwt_for(sid))
        assert c.get(f"{sim.cp_url}/browsers/manual-1/fs/read_file?path=/m").is_success
        web.command("browserrouting.evict", sid)
        web.command("browserrouting.clear")
        assert json.loads(web.command("browserrouting.routes")) == []
        summary = json.loads(web.command("browserrouting.summary"))
    assert summary["decisions"]["routed"] == 1 and summary["routes"] == 0
    assert summary["decisions"]["route_evicted"] == 2
    assert summary["outbound"][sim.base_url.split("/")[2]] == 1


# --------------------------------------------------------------------------- the routes file


async def test_routes_file_is_private_atomic_and_restored(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    journal = tmp_path / "routes.json.journal"
    for script in wired(browserrouting_routes_file=str(path)):
        await script.create("s1", "alpha")
        assert json.loads(journal.read_text())["put"]["jwt"] == JWT  # a change is one journal line
        script.routes_file.done()  # mitmdump exits: the journal is folded into the snapshot
        for file in (path, journal):
            assert stat.S_IMODE(file.stat().st_mode) == 0o600
        assert json.loads(path.read_text())["routes"][0]["jwt"] == JWT
        assert journal.read_text() == ""
        assert sorted(p.name for p in tmp_path.iterdir()) == ["routes.json", "routes.json.journal"]
    for script in wired(browserrouting_routes_file=str(path)):  # a restarted proxy
        assert decision(await script.send("GET", "/browsers/alpha/fs/x")) == ("routed", None)
        script.tctx.command(script.commands.evict, "s1")
    for script in wired(browserrouting_routes_file=str(path)):  # killed without exiting: the journal
        assert decision(await script.send("GET", "/browsers/alpha/fs/x")) == ("passthrough", "no_route")


async def test_a_route_change_appends_a_line_and_never_rewrites_every_route(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    for script in wired(browserrouting_routes_file=str(path)):
        for i in range(600):
            await script.create(f"s{i}")
        script.routes_file.done()
        snapshot = path.read_text()
        script.routes_file.running()  # attached again, the journal empty
        await script.create("one-more")
        assert path.read_text() == snapshot, "the snapshot is not rewritten for one change"
        assert len((tmp_path / "routes.json.journal").read_text().splitlines()) == 1


async def test_routes_file_entries_are_checked_like_learned_routes(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    entries = [
        {"session_id": "ok", "base_url": VM_BASE, "jwt": JWT},
        {"session_id": "evil", "base_url": "https://evil.example.com/x", "jwt": JWT},
        {"session_id": 5},
    ]
    path.write_text(json.dumps({"routes": entries}))
    for script in wired(browserrouting_routes_file=str(path)):
        assert [r["session_id"] for r in json.loads(script.tctx.command(script.commands.routes))] == ["ok"]


@pytest.mark.parametrize("text", ["{not json", '{"routes": 3}', "[]", "\x00\xff"])
async def test_corrupt_routes_file_is_reported_and_ignored(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "routes.json"
    path.write_text(text)
    with caplog.at_level(logging.WARNING):
        for script in wired(browserrouting_routes_file=str(path)):
            assert json.loads(script.tctx.command(script.commands.routes)) == []
            assert decision(await script.send("GET", "/browsers/s1/fs/x")) == ("passthrough", "no_route")
    assert "browserrouting_routes_file: ignoring" in caplog.text
    corrupt = tmp_path / "routes.json.corrupt"
    assert corrupt.read_text() == text, "the corrupt file is kept for the user to inspect"
    assert not path.exists() or json.loads(path.read_text()) == {"routes": []}


async def test_routes_file_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that fails midway leaves the previous file whole (written aside, then renamed)."""
    path = tmp_path / "routes.json"
    for script in wired(browserrouting_routes_file=str(path)):
        await script.create("s1")
        script.routes_file.compact()
        before = path.read_text()

        def crash(src: Any, dst: Any) -> None:
            raise OSError("disk full")

        monkeypatch.setattr("addon.routes_file.os.replace", crash)
        await script.create("s2")
        script.routes_file.compact()
        assert path.read_text() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["routes.json", "routes.json.journal"], (
            "the partial file is removed"
        )


def test_the_journal_replays_onto_the_snapshot_and_skips_a_torn_line() -> None:
    a, b, c = Route("a", VM_BASE, JWT), Route("b", VM_BASE, JWT), Route("c", VM_BASE, JWT, "n")
    lines = [journal_line("route_cached", c), journal_line("route_evicted", a), '{"put": {"sess']
    routes, unusable = replay_journal([a, b], lines)
    assert (routes, unusable) == ([b, c], 1)


def test_routes_file_round_trips_and_counts_bad_entries() -> None:
    routes = [Route("s1", VM_BASE, JWT, "n"), Route("s2", VM_BASE, JWT)]
    assert load_routes(dump_routes(routes)) == (routes, 0)
    text = json.dumps({"routes": [routes[0].as_dict(), {"session_id": 3}, "x"]})
    assert load_routes(text) == (routes[:1], 2)
    for bad in ("[]", '{"routes": {}}', "{", ""):
        with pytest.raises(ValueError):
            load_routes(bad)


def test_routes_survive_a_restart_and_the_summary_is_logged_at_exit(
    fresh_sim: Simulator, tmp_path: Path
) -> None:
    routes_file = tmp_path / "routes.json"
    options = proxy_options(fresh_sim, browserrouting_routes_file=str(routes_file))
    with Mitmdump(options) as first:
        with client(first) as c:
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
    with Mitmdump(options) as second, client(second) as c:  # nothing learned since the restart
        assert c.get(f"{fresh_sim.cp_url}/browsers/qa-alpha/telemetry/events").status_code == 200
        assert c.get(f"{fresh_sim.cp_url}/browsers/{browser['session_id']}/fs/read_file?path=/y").is_success
        assert [r["decision"] for r in second.records(session_id=browser["session_id"], wait_for=3)] == [
            "route_cached",
            "routed",
            "routed",
        ]
    assert len(vm_hits(fresh_sim, "telemetry/events")) == 1 and len(vm_hits(fresh_sim, "fs/read_file")) == 1
    assert fresh_sim.stats()["cp"]["count"] == 0


def test_a_corrupt_routes_file_is_reported_and_the_proxy_keeps_working(
    sim: Simulator, tmp_path: Path
) -> None:
    routes_file = tmp_path / "routes.json"
    routes_file.write_text('{"routes": [')
    with (
        Mitmdump(proxy_options(sim, browserrouting_routes_file=str(routes_file))) as proxy,
        client(proxy) as c,
    ):
        assert c.get(f"{sim.cp_url}/browsers").status_code == 200
        assert any("browserrouting_routes_file: ignoring" in line for line in proxy.output)
        assert proxy.process is not None and proxy.process.poll() is None
