"""Audit mode with the official SDKs routing by themselves: `kernel` 0.131.0 and `@onkernel/sdk` 0.84.0.

The SDKs send allowlisted browser calls to the VM themselves; a real mitmweb or mitmdump with
the addon in audit mode watches them and judges each exchange. Faults are injected by the proxy
(`browserrouting.inject`, or rules by browser name in `browserrouting_inject`). As the spec says
of these versions: neither falls back on `browser_gone` (so an injected `gone` is a
`missing_fallback`, and the next VM call a `stale_route`), both retry a VM 5xx on the VM, and
only the Python SDK re-issues a VM 403 to the CP (an `auth_fallback`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import kernel
import pytest
from audit_helpers import (
    audit_options,
    audit_table,
    audited,
    broken_by,
    exit_table,
    flow_lines,
    python_sdk,
    run_node,
    summary,
    wait_flow,
)
from mitmdump_runner import Mitmdump
from proxy_clients import AUTH, cp_requests, require_node, vm_requests
from simulator import Simulator

WINDOW_MS = 1500  # the SDKs' retry backoff reaches about a second: a VM retry must fall inside
PY_ROUTING = "telemetry"
NODE_DEFAULTS = "curl,telemetry/stream"  # @onkernel/sdk 0.84.0's own default allowlist


SIMULATOR_OPTIONS = {"sse_interval": 0.02}  # the module's simulator: a VM stream ends quickly


@pytest.fixture(scope="module")
def web(sim: Simulator) -> Iterator[Mitmdump]:
    """mitmweb in audit mode expecting the Python SDK's allowlist (set to `telemetry`)."""
    with Mitmdump(audit_options(sim, PY_ROUTING, WINDOW_MS), tool="mitmweb") as proxy:
        yield proxy


@pytest.fixture
def sdk(web: Mitmdump, sim: Simulator) -> Iterator[kernel.Kernel]:
    web.command("browserrouting.inject.clear")
    with python_sdk(web, sim, PY_ROUTING) as client:
        yield client


def create(client: kernel.Kernel, sim: Simulator) -> tuple[str, str]:
    sid = client.browsers.create().session_id
    return sid, sim.jwt_for(sid)


def events(client: kernel.Kernel, sid: str) -> Any:
    return client.get(f"/browsers/{sid}/telemetry/events", cast_to=object)


def read_stream(client: kernel.Kernel, sid: str) -> list[int]:
    with client.browsers.telemetry.stream(sid) as stream:
        return [event.seq for event in stream]


# --------------------------------------------------------------------------- Python SDK


def test_python_sdk_clean_run_conforms_and_keeps_the_api_key_off_the_vm(
    web: Mitmdump, sim: Simulator, sdk: kernel.Kernel
) -> None:
    sid, jwt = create(sdk, sim)
    assert read_stream(sdk, sid) == [1, 2, 3]
    assert [e["id"] for e in events(sdk, sid)][:2] == [f"vm-{sid}-1", f"vm-{sid}-2"]
    assert sdk.browsers.retrieve(sid).session_id == sid

    created = web.records("route_cached", sid)[-1]
    create_flow = flow_lines(web, created["flow_id"])[-1]
    flows = audited(web, sid, 3)
    assert summary([create_flow, *flows]) == [
        ("client_cp", "POST", 200, []),
        ("client_routed", "GET", 200, []),
        ("client_routed", "GET", 200, []),
        ("client_cp", "GET", 200, []),
    ]
    assert all(f["notes"] == [] for f in [create_flow, *flows])
    # At the simulator: the VM got the route's jwt and no API key; the CP got the API key.
    vm = vm_requests(sim, jwt)
    assert [(r["path"], r["status"]) for r in vm] == [
        ("/browser/kernel/telemetry/stream", 200),
        ("/browser/kernel/telemetry/events", 200),
    ]
    assert all("authorization" not in r["headers"] for r in vm)
    assert [(r["method"], r["headers"]["authorization"]) for r in cp_requests(sim, sid)] == [
        ("GET", AUTH["Authorization"])
    ]
    assert broken_by(audit_table(web), [create_flow, *flows]) == {}


def test_python_sdk_without_a_browser_gone_fallback_gets_missing_fallback_then_stale_route(
    web: Mitmdump, sim: Simulator, sdk: kernel.Kernel
) -> None:
    sid, jwt = create(sdk, sim)
    web.command("browserrouting.inject", f"{sid}/telemetry/events=gone:1")
    with pytest.raises(kernel.NotFoundError) as gone:
        events(sdk, sid)
    assert gone.value.body == {"code": "browser_gone", "message": "browser not found"}
    assert sdk.browser_route_cache.get(sid) is not None, "0.131.0 keeps the dead route"

    # No further traffic: the window's end alone settles it, and the record is logged again.
    (vm_flow,) = audited(web, sid, 1)
    record = wait_flow(web, vm_flow["flow_id"], lambda r: "missing_fallback" in r["violations"])
    first, *_, last = flow_lines(web, vm_flow["flow_id"])
    assert (first["violations"], first["injected"], first["vm_status"]) == ([], "gone", 404)
    assert record["violations"] == ["missing_fallback"] and record["notes"] == ["injected"]
    assert last["ts"] - first["ts"] >= WINDOW_MS / 1000 - 0.1

    # The SDK sends its next call for the session to the same VM route.
    assert read_stream(sdk, sid) == [1, 2, 3]
    flows = audited(web, sid, 2)
    assert summary(flows) == [
        ("client_routed", "GET", 404, ["missing_fallback"]),
        ("client_routed", "GET", 200, ["stale_route"]),
    ]
    assert not cp_requests(sim, sid), "no call of the session went to the CP"
    assert [r["path"] for r in vm_requests(sim, jwt)] == ["/browser/kernel/telemetry/stream"]
    assert broken_by(audit_table(web), flows) == {
        "missing_fallback": [flows[0]["flow_id"]],
        "stale_route": [flows[1]["flow_id"]],
    }


def test_python_sdk_retries_a_vm_502_on_the_vm_and_never_calls_the_cp(
    web: Mitmdump, sim: Simulator, sdk: kernel.Kernel
) -> None:
    sid, jwt = create(sdk, sim)
    web.command("browserrouting.inject", f"{sid}/telemetry/stream=502")
    with pytest.raises(kernel.InternalServerError) as err:
        read_stream(sdk, sid)
    assert err.value.status_code == 502

    flows = audited(web, sid, 3)
    assert summary(flows) == [("client_routed", "GET", 502, [])] * 3
    assert [f["notes"] for f in flows] == [["injected"], ["vm_retry", "injected"], ["vm_retry", "injected"]]
    assert not cp_requests(sim, sid) and not vm_requests(sim, jwt)  # every answer was injected
    assert broken_by(audit_table(web), flows) == {}


def test_python_sdk_gives_up_on_a_hanging_vm_by_its_own_timeout_and_never_calls_the_cp(
    web: Mitmdump, sim: Simulator
) -> None:
    """`hang`: no answer at all. The SDK's timeout fires, it retries on the VM, and never asks the
    CP: no fallback on a VM that does not answer."""
    web.command("browserrouting.inject.clear")
    with python_sdk(web, sim, PY_ROUTING, timeout=0.4, max_retries=1) as quick:
        sid, jwt = create(quick, sim)
        web.command("browserrouting.inject", f"{sid}/telemetry/events=hang")
        started = time.monotonic()
        with pytest.raises(kernel.APITimeoutError):
            events(quick, sid)
    assert time.monotonic() - started >= 0.8, "two attempts, each given up after 0.4 s"

    flows = audited(web, sid, 2)  # logged once the SDK left: each held flow then ends killed
    assert summary(flows) == [("client_routed", "GET", None, [])] * 2
    assert [(f["injected"], f["error"]) for f in flows] == [("hang", "Connection killed.")] * 2
    assert [f["notes"] for f in flows] == [["injected"], ["vm_retry", "injected"]]
    assert not cp_requests(sim, sid) and not vm_requests(sim, jwt)
    assert broken_by(audit_table(web), flows) == {}


def test_python_sdk_retries_two_vm_502s_then_gets_browser_gone_and_never_calls_the_cp(
    web: Mitmdump, sim: Simulator, sdk: kernel.Kernel
) -> None:
    """`502*2>gone`, one rule: what a VM going down looks like. 0.131.0 retries the 502s on the VM,
    hands the caller the browser_gone and does not fall back: the expected missing_fallback."""
    sid, jwt = create(sdk, sim)
    web.command("browserrouting.inject", f"{sid}/telemetry/events=502*2>gone")
    with pytest.raises(kernel.NotFoundError) as gone:
        events(sdk, sid)
    assert gone.value.body == {"code": "browser_gone", "message": "browser not found"}

    *retried, last = audited(web, sid, 3)
    record = wait_flow(web, last["flow_id"], lambda r: "missing_fallback" in r["violations"])
    assert summary([*retried, record]) == [
        ("client_routed", "GET", 502, []),
        ("client_routed", "GET", 502, []),
        ("client_routed", "GET", 404, ["missing_fallback"]),
    ]
    assert [f["injected"] for f in [*retried, record]] == ["502", "502", "gone"]
    assert [f["notes"] for f in [*retried, record]] == [["injected"], *[["vm_retry", "injected"]] * 2]
    assert not cp_requests(sim, sid) and not vm_requests(sim, jwt)
    assert [(r["rule"], r["spent"]) for r in json.loads(web.command("browserrouting.inject.list"))] == [
        (f"{sid}/telemetry/events=502*2>gone", True)
    ]


def test_python_sdk_re_issues_a_vm_403_once_to_the_cp_as_an_auth_fallback(
    web: Mitmdump, sim: Simulator, sdk: kernel.Kernel
) -> None:
    sid, jwt = create(sdk, sim)
    web.command("browserrouting.inject", f"{sid}/telemetry/events=403:1")
    assert [e["id"] for e in events(sdk, sid)][:1] == [f"cp-{sid}-1"]  # the CP's own events
    assert sdk.browser_route_cache.get(sid) is None, "the SDK evicted the stale route"

    vm_flow, cp_flow = audited(web, sid, 2)
    assert summary([vm_flow, cp_flow]) == [
        ("client_routed", "GET", 403, []),
        ("client_fallback", "GET", 200, []),
    ]
    assert (cp_flow["serves"], cp_flow["notes"]) == (vm_flow["flow_id"], ["auth_fallback"])
    (reissued,) = cp_requests(sim, sid)
    assert reissued["path"] == f"/browsers/{sid}/telemetry/events" and reissued["query"] == ""
    assert reissued["headers"]["authorization"] == AUTH["Authorization"]
    assert not vm_requests(sim, jwt)


def test_python_sdk_calling_again_after_an_auth_fallback_is_a_new_cp_call(
    web: Mitmdump, sim: Simulator, sdk: kernel.Kernel
) -> None:
    """The same call right after the re-issue was answered: the SDK has no route and asks the
    CP, which is the caller's next call, not a second re-issue of the VM's 403."""
    sid, _ = create(sdk, sim)
    web.command("browserrouting.inject", f"{sid}/telemetry/events=403:1")
    for _ in range(2):
        assert [e["id"] for e in events(sdk, sid)][:1] == [f"cp-{sid}-1"]
    flows = audited(web, sid, 3)
    assert summary(flows) == [
        ("client_routed", "GET", 403, []),
        ("client_fallback", "GET", 200, []),
        ("client_cp", "GET", 200, []),
    ]
    assert [f["notes"] for f in flows] == [["injected"], ["auth_fallback"], []]
    assert broken_by(audit_table(web), flows) == {}


def stream_after_a_fault(
    web: Mitmdump, sim: Simulator, sdk: kernel.Kernel, kind: str, error: type[Exception]
) -> tuple[str, list[dict[str, Any]]]:
    """A new browser's stream answered `kind` (the SDK raises `error`), the rule cleared, the
    stream read again: the browser's jwt and its audited flows."""
    sid, jwt = create(sdk, sim)
    web.command("browserrouting.inject", f"{sid}/telemetry/stream={kind}")
    with pytest.raises(error):
        read_stream(sdk, sid)
    web.command("browserrouting.inject.clear")
    assert read_stream(sdk, sid) == [1, 2, 3]  # at once, well inside the window
    return jwt, audited(web, sid, 2 if kind == "gone:1" else 4)


def test_python_sdk_reading_the_stream_after_a_browser_gone_on_it_keeps_a_conforming_route(
    web: Mitmdump, sim: Simulator, sdk: kernel.Kernel
) -> None:
    """The stream allows no fallback, so the reference keeps its route: the next read conforms."""
    jwt, flows = stream_after_a_fault(web, sim, sdk, "gone:1", kernel.NotFoundError)
    assert summary(flows) == [("client_routed", "GET", 404, []), ("client_routed", "GET", 200, [])]
    assert [f["notes"] for f in flows] == [["injected"], ["gone_before"]]
    assert [r["path"] for r in vm_requests(sim, jwt)] == ["/browser/kernel/telemetry/stream"]
    assert broken_by(audit_table(web), flows) == {}


def test_python_sdk_fresh_call_after_its_retries_of_a_502_is_no_vm_retry(
    web: Mitmdump, sim: Simulator, sdk: kernel.Kernel
) -> None:
    """`x-stainless-retry-count` tells the SDK's retries (1, 2) from the caller's next call (0)."""
    _, flows = stream_after_a_fault(web, sim, sdk, "502", kernel.InternalServerError)
    assert summary(flows) == [*[("client_routed", "GET", 502, [])] * 3, ("client_routed", "GET", 200, [])]
    retried = ["vm_retry", "injected"]
    assert [f["notes"] for f in flows] == [["injected"], retried, retried, []]


def test_python_sdk_delete_then_telemetry_goes_to_the_cp_without_violation(
    web: Mitmdump, sim: Simulator, sdk: kernel.Kernel
) -> None:
    sid, _ = create(sdk, sim)
    assert [e["id"] for e in events(sdk, sid)][:1] == [f"vm-{sid}-1"]
    sdk.browsers.delete_by_id(sid)
    with pytest.raises(kernel.NotFoundError):  # the CP no longer knows the browser
        events(sdk, sid)

    flows = audited(web, sid, 3)
    assert summary(flows) == [
        ("client_routed", "GET", 200, []),
        ("client_cp", "DELETE", 204, []),
        ("client_cp", "GET", 404, []),
    ]
    assert [r["decision"] for r in web.records("route_evicted", sid)] == ["route_evicted"]
    assert [(r["method"], r["status"]) for r in cp_requests(sim, sid)] == [("DELETE", 204), ("GET", 404)]


# --------------------------------------------------------------------------- Node SDK

NODE_RULES = (
    "node-gone/telemetry/stream=gone:1,node-502/telemetry/stream=502,node-403/telemetry/stream=403:1,"
    "node-502-once/telemetry/stream=502:3"
)


@pytest.fixture(scope="module")
def node_run(sim: Simulator) -> Iterator[dict[str, Any]]:
    """Every scenario in one run of the driver, at the SDK's default allowlist; faults come from
    rules naming the browsers it creates. The audit table is read from mitmdump's exit log."""
    require_node()
    steps: list[dict[str, Any]] = []
    for name, then in [
        (
            "node-clean",
            [{"op": "stream"}, {"op": "curl", "url": "https://example.test/"}, {"op": "retrieve"}],
        ),
        ("node-gone", [{"op": "stream"}, {"op": "stream"}]),
        ("node-502", [{"op": "stream"}]),
        ("node-502-once", [{"op": "stream"}, {"op": "stream"}]),
        ("node-403", [{"op": "stream"}, {"op": "stream"}]),
        ("node-delete", [{"op": "stream"}, {"op": "delete"}, {"op": "stream"}]),
    ]:
        steps += [{"op": "create", "name": name}, *then]
    options = audit_options(sim, NODE_DEFAULTS, WINDOW_MS, browserrouting_inject=NODE_RULES)
    with Mitmdump(options) as proxy:
        results = run_node(proxy, sim, steps)
        sessions = {r["name"]: r["session_id"] for r in proxy.records("route_cached", wait_for=5)}
        jwts = {name: sim.jwt_for(sid) for name, sid in sessions.items() if name != "node-delete"}
        run = {"steps": results, "sessions": sessions, "jwts": jwts}
        for name, sid in sessions.items():  # every attempt after the create is one audited flow
            audited(proxy, sid, sum(len(s[3]) for s in steps_of(run, name)[1:]))
        proxy.stop()  # settles whatever still waits for a fallback, and logs the table
        run["flows"] = {name: audited(proxy, sid, 1, timeout=0) for name, sid in sessions.items()}
        run["table"] = exit_table(proxy)
        yield run


def steps_of(run: dict[str, Any], name: str) -> list[tuple[str, bool, int | None, list[str]]]:
    """(op, ok, status, where each attempt went) of the steps for one browser, create first."""
    sid, out, mine = run["sessions"][name], [], False
    for step in run["steps"]:
        mine = step["id"] == sid if step["op"] == "create" else mine
        if mine:
            out.append((step["op"], step["ok"], step["status"], [r["to"] for r in step["requests"]]))
    return out


def test_node_sdk_clean_run_conforms(node_run: dict[str, Any], sim: Simulator) -> None:
    assert steps_of(node_run, "node-clean") == [
        ("create", True, 200, ["cp"]),
        ("stream", True, 200, ["vm"]),
        ("curl", True, 200, ["vm"]),
        ("retrieve", True, 200, ["cp"]),
    ]
    assert summary(node_run["flows"]["node-clean"]) == [
        ("client_routed", "GET", 200, []),
        ("client_routed", "POST", 200, []),
        ("client_cp", "GET", 200, []),
    ]
    vm = vm_requests(sim, node_run["jwts"]["node-clean"])
    assert [r["path"] for r in vm] == ["/browser/kernel/telemetry/stream", "/browser/kernel/curl"]
    assert all("authorization" not in r["headers"] for r in vm)


def test_node_sdk_reading_the_stream_after_a_browser_gone_on_it_conforms(
    node_run: dict[str, Any],
) -> None:
    """At its defaults the SDK routes no eligible GET (telemetry/events is not in its allowlist):
    a gone stream needs no fallback, and the reference keeps the route, so the next read conforms."""
    assert steps_of(node_run, "node-gone") == [
        ("create", True, 200, ["cp"]),
        ("stream", False, 404, ["vm"]),
        ("stream", True, 200, ["vm"]),
    ]
    flows = node_run["flows"]["node-gone"]
    assert summary(flows) == [("client_routed", "GET", 404, []), ("client_routed", "GET", 200, [])]
    assert [f["notes"] for f in flows] == [["injected"], ["gone_before"]]
    assert node_run["table"]["rules"]["missing_fallback"] == {"checked": 0, "broken": []}
    assert broken_by(node_run["table"], flows) == {}


def test_node_sdk_retries_a_vm_502_on_the_vm_without_violation(
    node_run: dict[str, Any], sim: Simulator
) -> None:
    assert steps_of(node_run, "node-502") == [
        ("create", True, 200, ["cp"]),
        ("stream", False, 502, ["vm"] * 3),
    ]
    flows = node_run["flows"]["node-502"]
    assert summary(flows) == [("client_routed", "GET", 502, [])] * 3
    assert [f["notes"] for f in flows] == [["injected"], ["vm_retry", "injected"], ["vm_retry", "injected"]]
    assert broken_by(node_run["table"], flows) == {}
    assert not cp_requests(sim, node_run["sessions"]["node-502"])


def test_node_sdk_fresh_call_after_its_retries_of_a_502_is_no_vm_retry(node_run: dict[str, Any]) -> None:
    assert steps_of(node_run, "node-502-once") == [
        ("create", True, 200, ["cp"]),
        ("stream", False, 502, ["vm"] * 3),
        ("stream", True, 200, ["vm"]),
    ]
    flows = node_run["flows"]["node-502-once"]
    retried = ["vm_retry", "injected"]
    assert [f["notes"] for f in flows] == [["injected"], retried, retried, []]
    assert broken_by(node_run["table"], flows) == {}


def test_node_sdk_returns_a_vm_403_to_the_caller_and_keeps_the_route_without_violation(
    node_run: dict[str, Any], sim: Simulator
) -> None:
    """0.84.0 has no stale-jwt rule: no CP re-issue (so no fallback to judge), and the route it
    keeps is not stale (a 403 evicts nothing), so the next VM call conforms."""
    assert steps_of(node_run, "node-403") == [
        ("create", True, 200, ["cp"]),
        ("stream", False, 403, ["vm"]),
        ("stream", True, 200, ["vm"]),
    ]
    flows = node_run["flows"]["node-403"]
    assert summary(flows) == [("client_routed", "GET", 403, []), ("client_routed", "GET", 200, [])]
    assert [f["notes"] for f in flows] == [["injected"], []]
    assert not cp_requests(sim, node_run["sessions"]["node-403"])
    vm = vm_requests(sim, node_run["jwts"]["node-403"])  # the injected 403 never reached it
    assert [(r["path"], r["status"]) for r in vm] == [("/browser/kernel/telemetry/stream", 200)]


def test_node_sdk_delete_then_stream_goes_to_the_cp_without_violation(node_run: dict[str, Any]) -> None:
    assert steps_of(node_run, "node-delete") == [
        ("create", True, 200, ["cp"]),
        ("stream", True, 200, ["vm"]),
        ("delete", True, 204, ["cp"]),
        ("stream", False, 404, ["cp"]),
    ]
    assert summary(node_run["flows"]["node-delete"]) == [
        ("client_routed", "GET", 200, []),
        ("client_cp", "DELETE", 204, []),
        ("client_cp", "GET", 404, []),
    ]


def test_node_sdk_routing_telemetry_gets_missing_fallback_then_stale_route(
    web: Mitmdump, sim: Simulator
) -> None:
    """With its allowlist widened to `telemetry` (the SDK's own env knob, matched by the audit's),
    the SDK routes the eligible GET; a gone there is a missing fallback, settled by its next VM call."""
    require_node()
    web.command("browserrouting.inject.clear")
    web.command("browserrouting.inject", "node-events/telemetry/events=gone:1")
    steps = [
        {"op": "create", "name": "node-events"},
        {"op": "get", "path": "/browsers/{id}/telemetry/events"},
        {"op": "stream"},
    ]
    results = run_node(web, sim, steps, routing=PY_ROUTING)
    assert [(r["ok"], r["status"], [a["to"] for a in r["requests"]]) for r in results] == [
        (True, 200, ["cp"]),
        (False, 404, ["vm"]),
        (True, 200, ["vm"]),
    ]
    flows = audited(web, results[0]["id"], 2)
    assert summary(flows) == [
        ("client_routed", "GET", 404, ["missing_fallback"]),
        ("client_routed", "GET", 200, ["stale_route"]),
    ]
