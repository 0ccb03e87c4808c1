"""Route commands, the routes file and browser names: unit level, with mitmproxy's taddons."""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import exceptions, http
from mitmproxy.addons.script import load_script
from mitmproxy.test import taddons, tflow, tutils

ROOT = Path(__file__).resolve().parent.parent
CP_HOST = "api.example.test"
BASE = "https://proxy.iad.vm.test:8443/browser/kernel"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzaWQiOiJzMSJ9.SIGNATURE-secret"


class Proxy:
    """The entry script's addons, wired as mitmdump wires them, in a taddons context."""

    def __init__(self, tctx: taddons.context, addons: list[Any]) -> None:
        self.tctx = tctx
        self.router, self.routes_file, self.fallback, _, _, self.commands, self.recorder, self.parts = addons

    async def send(
        self, method: str, path: str, response: http.Response | None = None, replay: bool = False
    ) -> http.HTTPFlow:
        """One client request through the hooks, answered by `response`; `replay`: by server replay."""
        req = tutils.treq(method=method.encode(), scheme=b"https", host=CP_HOST, port=443, path=path.encode())
        flow = tflow.tflow(req=req)
        for name in ("requestheaders", "request", "responseheaders", "response"):
            if name == "responseheaders":
                flow.response = response or http.Response.make(
                    200, b"{}", {"Content-Type": "application/json"}
                )
                flow.is_replay = "response" if replay else None
            for a in (self.parts,):
                hook = getattr(a, name, None)
                if hook is not None:
                    result = hook(flow)
                    if result is not None:
                        await result
        return flow

    async def create(self, session_id: str, name: str | None = None) -> None:
        obj = {
            "session_id": session_id,
            "name": name,
            "base_url": BASE,
            "cdp_ws_url": f"wss://x/cdp?jwt={JWT}",
        }
        await self.send(
            "POST",
            "/browsers",
            http.Response.make(200, json.dumps(obj), {"Content-Type": "application/json"}),
        )


def wired(**options: Any) -> Iterator[Proxy]:
    module = load_script(str(ROOT / "addon" / "browser_routing.py"))
    assert module is not None
    with taddons.context(*module.addons) as tctx:
        tctx.options.update(
            browserrouting_control_plane=f"https://{CP_HOST}",
            browserrouting_vm_hosts="*.vm.test",
            browserrouting_subresources="telemetry,fs",
            **options,
        )
        for a in module.addons:
            if hasattr(a, "running"):
                a.running()
        yield Proxy(tctx, module.addons)


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    yield from wired()


def decision(flow: http.HTTPFlow) -> tuple[str, str | None]:
    record = flow.metadata["browserrouting"]
    return record["decision"], record["reason"]


async def test_routes_command_lists_the_cache_with_jwts_redacted(proxy: Proxy) -> None:
    await proxy.create("s1", "alpha")
    routes = json.loads(proxy.tctx.command(proxy.commands.routes))
    assert routes == [{"session_id": "s1", "name": "alpha", "base_url": BASE, "jwt": JWT[:6] + "…"}]


async def test_add_command_routes_and_applies_the_vm_host_check(proxy: Proxy) -> None:
    proxy.tctx.command(proxy.commands.add, "s9", BASE + "/", JWT)
    assert decision(await proxy.send("GET", "/browsers/s9/fs/read_file"))[0] == "routed"
    with pytest.raises(exceptions.CommandError, match="vm_host"):
        proxy.tctx.command(proxy.commands.add, "s8", "https://evil.example.com/browser/kernel", JWT)
    with pytest.raises(exceptions.CommandError, match="scheme"):
        proxy.tctx.command(proxy.commands.add, "s8", "ftp://proxy.vm.test/x", JWT)
    with pytest.raises(exceptions.CommandError, match="empty"):
        proxy.tctx.command(proxy.commands.add, "s8", BASE, " ")
    assert [r["session_id"] for r in json.loads(proxy.tctx.command(proxy.commands.routes))] == ["s9"]


async def test_evict_and_clear_commands(proxy: Proxy) -> None:
    await proxy.create("s1", "alpha")
    await proxy.create("s2")
    proxy.tctx.command(proxy.commands.evict, "alpha")
    assert decision(await proxy.send("GET", "/browsers/s1/fs/x")) == ("passthrough", "no_route")
    with pytest.raises(exceptions.CommandError, match="no route"):
        proxy.tctx.command(proxy.commands.evict, "alpha")
    proxy.tctx.command(proxy.commands.clear)
    assert json.loads(proxy.tctx.command(proxy.commands.routes)) == []
    assert decision(await proxy.send("GET", "/browsers/s2/fs/x")) == ("passthrough", "no_route")


async def test_summary_counts_decisions_and_outbound_hosts(
    proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    await proxy.create("s1")
    await proxy.send("GET", "/browsers/s1/fs/a")
    await proxy.send("GET", "/browsers/s1/fs/b")
    await proxy.send("GET", "/browsers/s2/fs/a")
    summary = json.loads(proxy.tctx.command(proxy.commands.summary))
    assert summary == {
        "decisions": {"passthrough": 2, "route_cached": 1, "routed": 2},
        "outbound": {f"{CP_HOST}:443": 2, "proxy.iad.vm.test:8443": 2},
        "routes": 1,
    }
    replayed = await proxy.send("GET", "/browsers/s1/fs/c", replay=True)
    assert decision(replayed) == ("routed", None)
    assert json.loads(proxy.tctx.command(proxy.commands.summary))["outbound"]["proxy.iad.vm.test:8443"] == 2
    with caplog.at_level(logging.INFO):
        proxy.commands.done()
    assert "browserrouting summary:" in caplog.text and '"routed": 3' in caplog.text


async def test_names_route_like_ids_and_a_delete_by_either_evicts_both(proxy: Proxy) -> None:
    await proxy.create("s1", "alpha")
    assert decision(await proxy.send("GET", "/browsers/alpha/fs/read_file")) == ("routed", None)
    flow = await proxy.send("GET", "/browsers/alpha/telemetry/events")
    assert flow.metadata["browserrouting"]["session_id"] == "s1"
    await proxy.send("DELETE", "/browsers/alpha")
    for key in ("alpha", "s1"):
        assert decision(await proxy.send("GET", f"/browsers/{key}/fs/x")) == ("passthrough", "no_route")
    await proxy.create("s2", "beta")
    await proxy.send("DELETE", "/v1/browsers/s2")
    assert decision(await proxy.send("GET", "/browsers/beta/fs/x")) == ("passthrough", "no_route")


async def test_routes_file_is_private_atomic_and_restored(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    journal = tmp_path / "routes.json.journal"
    for proxy in wired(browserrouting_routes_file=str(path)):
        await proxy.create("s1", "alpha")
        assert json.loads(journal.read_text())["put"]["jwt"] == JWT  # a change is one journal line
        proxy.routes_file.done()  # mitmdump exits: the journal is folded into the snapshot
        for file in (path, journal):
            assert stat.S_IMODE(file.stat().st_mode) == 0o600
        assert json.loads(path.read_text())["routes"][0]["jwt"] == JWT
        assert journal.read_text() == ""
        assert sorted(p.name for p in tmp_path.iterdir()) == ["routes.json", "routes.json.journal"]
    for proxy in wired(browserrouting_routes_file=str(path)):  # a restarted proxy
        assert decision(await proxy.send("GET", "/browsers/alpha/fs/x")) == ("routed", None)
        proxy.tctx.command(proxy.commands.evict, "s1")
    for proxy in wired(browserrouting_routes_file=str(path)):  # killed without exiting: the journal
        assert decision(await proxy.send("GET", "/browsers/alpha/fs/x")) == ("passthrough", "no_route")


async def test_a_route_change_appends_a_line_and_never_rewrites_every_route(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    for proxy in wired(browserrouting_routes_file=str(path)):
        for i in range(600):
            await proxy.create(f"s{i}")
        proxy.routes_file.done()
        snapshot = path.read_text()
        proxy.routes_file.running()  # attached again, the journal empty
        await proxy.create("one-more")
        assert path.read_text() == snapshot, "the snapshot is not rewritten for one change"
        assert len((tmp_path / "routes.json.journal").read_text().splitlines()) == 1


async def test_routes_file_entries_are_checked_like_learned_routes(tmp_path: Path) -> None:
    path = tmp_path / "routes.json"
    entries = [
        {"session_id": "ok", "base_url": BASE, "jwt": JWT},
        {"session_id": "evil", "base_url": "https://evil.example.com/x", "jwt": JWT},
        {"session_id": 5},
    ]
    path.write_text(json.dumps({"routes": entries}))
    for proxy in wired(browserrouting_routes_file=str(path)):
        assert [r["session_id"] for r in json.loads(proxy.tctx.command(proxy.commands.routes))] == ["ok"]


@pytest.mark.parametrize("text", ["{not json", '{"routes": 3}', "[]", "\x00\xff"])
async def test_corrupt_routes_file_is_reported_and_ignored(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "routes.json"
    path.write_text(text)
    with caplog.at_level(logging.WARNING):
        for proxy in wired(browserrouting_routes_file=str(path)):
            assert json.loads(proxy.tctx.command(proxy.commands.routes)) == []
            assert decision(await proxy.send("GET", "/browsers/s1/fs/x")) == ("passthrough", "no_route")
    assert "browserrouting_routes_file: ignoring" in caplog.text
    corrupt = tmp_path / "routes.json.corrupt"
    assert corrupt.read_text() == text, "the corrupt file is kept for the user to inspect"
    assert not path.exists() or json.loads(path.read_text()) == {"routes": []}


async def test_routes_file_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that fails midway leaves the previous file whole (written aside, then renamed)."""
    path = tmp_path / "routes.json"
    for proxy in wired(browserrouting_routes_file=str(path)):
        await proxy.create("s1")
        proxy.routes_file.compact()
        before = path.read_text()

        def crash(src: Any, dst: Any) -> None:
            raise OSError("disk full")

        monkeypatch.setattr("addon.persistence.os.replace", crash)
        await proxy.create("s2")
        proxy.routes_file.compact()
        assert path.read_text() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["routes.json", "routes.json.journal"], (
            "the partial file is removed"
        )


async def test_cache_changes_in_the_log_name_what_caused_them(tmp_path: Path) -> None:
    log = tmp_path / "decisions.jsonl"
    for proxy in wired(browserrouting_log=str(log)):
        await proxy.create("s1")
        proxy.tctx.command(proxy.commands.evict, "s1")
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    cached, created, evicted = lines
    assert (cached["decision"], cached["reason"], cached["method"]) == ("route_cached", "create", "POST")
    assert cached["url"] == f"https://{CP_HOST}/browsers" and cached["flow_id"] == created["flow_id"]
    assert cached["jwt"] == JWT[:6] + "…" and JWT not in log.read_text()
    assert (evicted["decision"], evicted["reason"]) == ("route_evicted", "command")
    assert (evicted["method"], evicted["url"], evicted["flow_id"]) == (None, None, None)


def test_a_bad_env_default_is_blamed_on_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNEL_BROWSER_ROUTING_SUBRESOURCES", "telemetry/str eam")
    module = load_script(str(ROOT / "addon" / "browser_routing.py"))
    assert module is not None
    with (
        taddons.context(*module.addons) as tctx,
        pytest.raises(exceptions.OptionsError, match=r"\$KERNEL_BROWSER_ROUTING_SUBRESOURCES"),
    ):
        tctx.options.update(browserrouting_subresources="telemetry/str eam")


async def test_log_path_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for proxy in wired(browserrouting_log="~/decisions.jsonl"):
        await proxy.create("s1")
    assert '"route_cached"' in (tmp_path / "decisions.jsonl").read_text()


async def test_a_replayed_flow_is_decided_afresh(proxy: Proxy) -> None:
    await proxy.create("s1")
    flow = await proxy.send("GET", "/browsers/s1/fs/a")
    assert decision(flow) == ("routed", None)
    # mitmweb's Replay sends the flow again as it stands: to the VM, not a CP request any more
    flow.response, flow.is_replay = None, "request"
    proxy.parts.requestheaders(flow)
    assert "browserrouting" not in flow.metadata and flow.comment == "" and flow.marked == ""
