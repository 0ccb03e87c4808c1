"""The mitmproxy internals the addon's performance shortcuts rely on (docs/performance.md lists
them). Each test fails if an upgrade changes what the shortcut assumes: run this file, and the
tests the page names, before moving the mitmproxy pin."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from flows import cp_flow
from mitmproxy.proxy.layers import http as http_layer
from mitmproxy.proxy.layers.http._hooks import HttpRequestHook
from mitmproxy.test import taddons

from addon.faults.steps import parse_step
from addon.hooks import BrowserRouting
from addon.router import QuietRoutedStreams, VmHeaders

KEY = (b"Authorization", b"Bearer sk-secret")


@pytest.mark.parametrize(
    "change",
    [
        lambda h: h.__setitem__("Authorization", "Bearer sk-secret"),
        lambda h: h.add("authorization", "Bearer sk-secret"),
        lambda h: h.set_all("AUTHORIZATION", ["Bearer sk-secret"]),
        lambda h: h.insert(0, "Authorization", "Bearer sk-secret"),
        lambda h: h.update({"Authorization": "Bearer sk-secret"}),
        lambda h: setattr(h, "fields", (*h.fields, KEY)),
    ],
    ids=["setitem", "add", "set_all", "insert", "update", "fields"],
)
def test_every_way_of_changing_headers_goes_through_fields_so_vm_headers_keep_the_key_out(
    change: Any,
) -> None:
    """VmHeaders guards the one assignment every Headers mutation makes (`fields`): the API key
    cannot be added to a routed request by another addon, modify_headers or stickyauth."""
    headers = VmHeaders.routed(((b"Host", b"cp.test"), (b"X-A", b"1")), b"vm.test:8443")
    change(headers)
    assert "authorization" not in headers
    assert all(name.lower() != b"authorization" for name, _ in headers.fields)
    assert headers["host"] == "vm.test:8443" and headers["x-a"] == "1"


def test_the_streaming_log_line_is_the_one_the_quiet_filter_drops() -> None:
    """mitmproxy's HTTP layer logs `Streaming response from <host>.` for each streamed answer;
    the router drops those of the VMs it routed to, by their text."""
    assert 'f"Streaming response from {self.flow.request.host}."' in inspect.getsource(http_layer)
    quiet = QuietRoutedStreams()
    quiet.vm_hosts.add("vm.test")

    def line(host: str) -> Any:
        return type("Record", (), {"msg": f"{QuietRoutedStreams.PREFIX}{host}."})()

    assert not quiet.filter(line("vm.test")) and quiet.filter(line("other.test"))


async def test_a_hook_attribute_that_is_none_is_skipped_and_one_that_is_set_is_called() -> None:
    """The addon offers `request` only while a flow waits for an injected answer: mitmproxy must
    skip the attribute while it is None and call it once it is not."""
    addon = BrowserRouting()
    with taddons.context(addon) as tctx:
        flow = cp_flow("GET", "/apps")
        assert addon.request is None
        await tctx.master.addons.handle_lifecycle(HttpRequestHook(flow))  # no call, no error
        called: list[str] = []
        addon.injector.awaiting[flow.id] = parse_step("502", alone=True)
        addon.injector.on_request = lambda flow: called.append(flow.id)  # type: ignore[method-assign]
        await tctx.master.addons.handle_lifecycle(HttpRequestHook(flow))
        assert called == [flow.id]


def test_request_data_holds_the_fields_the_rewrite_writes_directly() -> None:
    """The rewrite and the re-issue write scheme, host, port, authority and path straight into
    `request.data`, as the setters store them (test_routing compares the result with the setters)."""
    request = cp_flow("GET", "/browsers/s/fs/x").request
    d = request.data
    d.scheme, d.host, d.port, d.path = b"https", "vm.test", 8443, b"/browser/kernel/fs/x"
    assert request.url == "https://vm.test:8443/browser/kernel/fs/x"
    assert (request.scheme, request.host, request.port) == ("https", "vm.test", 8443)
