"""Inspection and replay: flows read back from a file, flows replayed, re-issues saved as flows.

The demo's scenarios, recorded by scripts/record.py, are replayed offline: the recording runs the
simulator; the replay does not (its ports refuse connections). mitmdump with the addon and
`--server-replay upstream.mitm` answers every request the addon sends on (the routed VM calls, the
CP calls, the fallback's re-issue) from what the servers answered at record time, so the addon must
take the same decisions and the client must get the same answers as in client.mitm. A flow read
offline is never routed nor re-issued; a replayed flow is decided afresh.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from addon_harness import Harness, Wired, decision, record, routed
from conftest import proxy_options
from flows import browser, cp_flow, cp_request, gone_response
from known import CP, SID
from mitmdump_runner import ENTRY, Mitmdump
from mitmproxy import http, io
from mitmproxy.test import tflow
from proxy_clients import API_KEY as LIVE_API_KEY
from proxy_clients import client, create_browser, events_url
from record import record as record_scenario
from simulator import Simulator

from addon.recorder import METADATA_KEY

MITMDUMP = Path(sys.executable).parent / "mitmdump"
CLIENT_HEADERS = ("content-type", "x-next-offset", "x-has-more")
Record = dict[str, Any]


def read_flows(path: Path) -> list[http.HTTPFlow]:
    with path.open("rb") as f:
        return [flow for flow in io.FlowReader(f).stream() if isinstance(flow, http.HTTPFlow)]


def summary(rec: Record) -> tuple[Any, ...]:
    """What a replay must reproduce of a flow's decision (flow ids differ between runs)."""
    cache = [(c["decision"], c["reason"], c["session_id"]) for c in rec.get("cache", [])]
    keys = ("decision", "reason", "session_id", "method", "url", "vm_status", "cp_status")
    return (*(rec.get(k) for k in keys), cache)


def flow_records(records: list[Record]) -> list[Record]:
    return [r for r in records if not r["decision"].startswith("route_")]


@dataclass
class Recording:
    outdir: Path
    scenario: dict[str, Any]
    upstream: list[http.HTTPFlow]  # what the servers answered
    client: list[http.HTTPFlow]  # what the client got, in order, re-issues included

    @property
    def answers(self) -> list[http.HTTPFlow]:
        """The flows the client saw (a re-issue only feeds the flow it serves)."""
        return [f for f in self.client if record(f)["decision"] != "reissue"]

    @property
    def log_lines(self) -> int:
        """Decision log lines of a run: one per flow and one per cache change."""
        return sum(1 + len(record(f).get("cache", [])) for f in self.client)


@dataclass
class Replay:
    responses: list[httpx.Response]
    records: list[Record]
    output: str


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    outdir = tmp_path_factory.mktemp("recording")
    scenario = record_scenario(outdir)  # starts and stops the simulator, A and B
    return Recording(
        outdir, scenario, read_flows(outdir / "upstream.mitm"), read_flows(outdir / "client.mitm")
    )


def refuses(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def send(client: httpx.Client, request: dict[str, Any]) -> httpx.Response:
    """One recorded client request, as the client sent it (httpx sets Host and Content-Length)."""
    headers = [(k, v) for k, v in request["headers"] if k.lower() not in ("host", "content-length")]
    return client.request(
        request["method"], request["url"], headers=headers, content=request["body"].encode()
    )


@pytest.fixture(scope="module")
def replay(recording: Recording) -> Iterator[Replay]:
    servers = {(f.request.host, f.request.port) for f in recording.upstream}
    assert servers and all(refuses(*server) for server in servers), "the simulator must be stopped"
    extra = ("--server-replay", str(recording.outdir / "upstream.mitm"), "--set", "server_replay_extra=kill")
    with Mitmdump(recording.scenario["options"], extra_args=extra) as proxy:
        with httpx.Client(proxy=proxy.url, timeout=10) as client:
            responses = [send(client, request) for request in recording.scenario["requests"]]
        records = proxy.records(wait_for=recording.log_lines)
        proxy.stop()
        yield Replay(responses, records, "".join(proxy.output))


# --------------------------------------------------------------------------- the recorded scenarios, replayed


def test_recording_holds_what_went_upstream(recording: Recording) -> None:
    """B saw the VM's raw 404 browser_gone and the CP re-issue, not what the client got."""
    gone = [f for f in recording.upstream if f.response and f.response.status_code == 404]
    assert [f.request.path.split("?")[0] for f in gone] == [
        "/browser/kernel/telemetry/stream",
        "/browser/kernel/telemetry/events",
    ]
    assert all(json.loads(f.response.content or b"")["code"] == "browser_gone" for f in gone if f.response)
    assert all("authorization" not in f.request.headers for f in gone)
    events = [f for f in recording.upstream if f.request.path.endswith("/telemetry/events")]
    assert [f.request.host for f in events] == ["127.0.0.1", "127.0.0.1"]  # the re-issue, then read 2
    assert all(f.request.headers["authorization"].startswith("Bearer ") for f in events)
    assert len(recording.scenario["requests"]) == len(recording.answers) == 5


def test_replay_sends_nothing_upstream(replay: Replay) -> None:
    """Every request the addon sent on was answered from upstream.mitm. (Once every recorded
    answer is used, mitmproxy 12.3.1 forwards further requests even with server_replay_extra=kill.)"""
    assert "killed non-replay request" not in replay.output
    assert "server connect" not in replay.output
    assert "error establishing server connection" not in replay.output


def test_replay_gives_the_client_the_recorded_answers(recording: Recording, replay: Replay) -> None:
    assert len(replay.responses) == len(recording.answers)
    for got, flow in zip(replay.responses, recording.answers, strict=True):
        want = flow.response
        assert want is not None
        where = f"{flow.request.method} {record(flow)['url']}"
        assert got.status_code == want.status_code, where
        assert got.content == want.content, where
        for name in CLIENT_HEADERS:
            assert got.headers.get(name) == want.headers.get(name), f"{where}: {name}"


def test_replay_makes_the_recorded_decisions(recording: Recording, replay: Replay) -> None:
    recorded = [summary(record(f)) for f in recording.client]
    assert [summary(r) for r in flow_records(replay.records)] == recorded
    changes = [(r["decision"], r["reason"], r["session_id"]) for r in replay.records]
    assert [c for c in changes if c[0].startswith("route_")] == [
        c for f in recording.client for c in summary(record(f))[-1]
    ]


def test_the_fallback_runs_offline(replay: Replay) -> None:
    by = {r["decision"]: r for r in flow_records(replay.records)}
    fallback, reissue = by["fallback"], by["reissue"]
    assert (fallback["vm_status"], fallback["cp_status"]) == (404, 200)
    assert reissue["serves"] == fallback["flow_id"] and fallback["reissue_flow"] == reissue["flow_id"]
    assert ("route_evicted", "browser_gone") in [(r["decision"], r["reason"]) for r in replay.records]


# --------------------------------------------------------------------------- reading recorded flows offline


def offline_read(recording: Recording, tmp_path: Path) -> tuple[list[http.HTTPFlow], list[Record]]:
    """`mitmdump -nr client.mitm -s addon/browser_routing.py -w out.mitm`: the flows and the log."""
    log, out = tmp_path / "decisions.jsonl", tmp_path / "out.mitm"
    options = {**recording.scenario["options"], "browserrouting_log": str(log), "confdir": str(tmp_path)}
    sets = [arg for name, value in options.items() for arg in ("--set", f"{name}={value}")]
    args = [str(MITMDUMP), "-nr", str(recording.outdir / "client.mitm"), "-s", str(ENTRY), "-w", str(out)]
    done = subprocess.run([*args, *sets], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "error" not in done.stdout.lower(), done.stdout + done.stderr
    return read_flows(out), [json.loads(line) for line in log.read_text().splitlines()]


def test_offline_read_keeps_the_recorded_decisions(recording: Recording, tmp_path: Path) -> None:
    flows, records = offline_read(recording, tmp_path)
    # No re-issue: the same flows (a re-issue would be a new flow), with the same decisions.
    assert [f.id for f in flows] == [f.id for f in recording.client]
    keys = ("decision", "reason", "vm_status", "cp_status", "serves", "reissue_flow")
    assert [[record(f).get(k) for k in keys] for f in flows] == [
        [record(f).get(k) for k in keys] for f in recording.client
    ]
    assert [(r["flow_id"], r["decision"]) for r in flow_records(records)] == [
        (f.id, record(f)["decision"]) for f in recording.client
    ]
    assert not any(r["decision"] == "route_evicted" for r in records)


def test_offline_read_changes_no_route(recording: Recording, tmp_path: Path) -> None:
    flows, records = offline_read(recording, tmp_path)
    assert [r for r in records if r["decision"].startswith("route_")] == []
    assert [record(f) for f in flows] == [record(f) for f in recording.client]


async def test_a_routed_flow_read_offline_is_never_reissued(h: Harness) -> None:
    # A routed flow read back from a file (mitmdump -nr): live is False.
    flow = await routed(h)
    flow.live = False
    vm = gone_response()
    await h.respond_untouched(flow, vm)
    assert record(flow)["decision"] == "routed"
    assert h.router.cache.get(SID) is not None


async def test_a_request_read_offline_is_never_routed(h: Harness) -> None:
    await h.learn(browser())
    flow = tflow.tflow(req=cp_request("GET", f"/browsers/{SID}/telemetry/events"), live=False)
    await h.request(flow)
    assert flow.request.url == f"{CP}/browsers/{SID}/telemetry/events"
    assert METADATA_KEY not in flow.metadata


# --------------------------------------------------------------------------- replayed flows


async def test_a_replayed_flow_is_decided_afresh_not_from_its_old_record(h: Harness) -> None:
    await h.learn(browser())
    flow = cp_flow("GET", f"/browsers/{SID}/fs/x")
    flow.metadata[METADATA_KEY] = {"decision": "passthrough", "reason": "no_route", "stale": True}
    await h.request(flow)
    assert record(flow)["decision"] == "routed"
    assert "stale" not in record(flow)


async def test_mitmwebs_replay_of_a_routed_flow_goes_as_it_stands_without_a_record(script: Wired) -> None:
    await script.create("s1")
    flow = await script.send("GET", "/browsers/s1/fs/a")
    assert decision(flow) == ("routed", None)
    # mitmweb's Replay sends the flow again as it stands: to the VM, not a CP request any more
    flow.response, flow.is_replay = None, "request"
    script.parts.requestheaders(flow)
    assert "browserrouting" not in flow.metadata and flow.comment == "" and flow.marked == ""


def test_reissue_is_a_flow_of_its_own_in_saved_flows(sim: Simulator, tmp_path: Path) -> None:
    """What the view and `-w` see: the re-issue is its own flow, linked both ways."""
    flows_file = tmp_path / "flows.mitm"
    with Mitmdump(proxy_options(sim, save_stream_file=str(flows_file))) as proxy:
        sid = create_browser(proxy, sim)["session_id"]
        sim.kill_on_vm(sid)
        with client(proxy) as c:
            assert c.get(events_url(sim, sid)).status_code == 200
        proxy.records("fallback", sid)
    flows = read_flows(flows_file)
    by_decision = {fl.metadata["browserrouting"]["decision"]: fl for fl in flows}
    original, reissue = by_decision["fallback"], by_decision["reissue"]
    assert reissue.id != original.id and reissue.is_replay == "request"
    assert reissue.metadata["browserrouting"]["serves"] == original.id
    assert original.metadata["browserrouting"]["reissue_flow"] == reissue.id
    assert reissue.request.url == events_url(sim, sid)
    assert reissue.request.headers["authorization"] == f"Bearer {LIVE_API_KEY}"
    assert original.response is not None and original.response.status_code == 200
    assert original.marked == ":arrows_counterclockwise:" and reissue.marked == ":leftwards_arrow_with_hook:"
