"""mitmweb, as an engineer uses it: the decisions must be readable in the UI itself.

Starts a real `mitmweb -s addon/browser_routing.py` with the Comment column docs/report.md's
command turns on, drives traffic through it against the simulator, and reads the flow
list and a flow's Comment tab in headless Debian Chromium driven by Playwright. The
screenshots land in `artifacts/`.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import proxy_options
from mitmdump_runner import ROOT, Mitmdump
from proxy_clients import client
from simulator import Simulator

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts"
# The columns of the mitmweb command in docs/report.md, so that the command stays true.
WEB_COLUMNS = re.findall(r"--set web_columns=(\w+)", (ROOT / "docs" / "report.md").read_text())

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"),
    reason="needs Debian's chromium (scripts/setup installs it when run as root)",
)


@pytest.fixture
def mitmweb(sim: Simulator) -> Iterator[Mitmdump]:
    columns = tuple(arg for column in WEB_COLUMNS for arg in ("--set", f"web_columns={column}"))
    with Mitmdump(proxy_options(sim), tool="mitmweb", extra_args=columns) as web:
        yield web


def drive_four_decisions(sim: Simulator, proxy: Mitmdump) -> dict[str, str]:
    """One flow of each decision: passthrough, routed, fallback (and its re-issue), no_fallback."""
    with client(proxy) as c:
        sid = c.post(f"{sim.cp_url}/browsers", json={}).json()["session_id"]
        assert c.get(f"{sim.cp_url}/browsers/{sid}/fs/read_file", params={"path": "/etc/hostname"}).is_success
        sim.kill_on_vm(sid)
        assert (
            c.post(f"{sim.cp_url}/browsers/{sid}/process/exec", json={"command": "true"}).status_code == 404
        )
        assert c.get(f"{sim.cp_url}/browsers/{sid}/telemetry/events").status_code == 200
    return {"session_id": sid}


def test_decisions_are_visible_in_mitmweb(sim: Simulator, mitmweb: Mitmdump) -> None:
    from playwright.sync_api import expect, sync_playwright

    assert "comment" in WEB_COLUMNS, "the documented mitmweb command shows the Comment column"
    sid = drive_four_decisions(sim, mitmweb)["session_id"]
    fallback = mitmweb.records("fallback", sid)[-1]
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        page = browser.new_page(viewport={"width": 1600, "height": 700})
        page.goto(mitmweb.web_url)
        rows = page.locator(".flow-table tbody tr")
        expect(rows.filter(has_text="fallback: VM 404 browser_gone")).to_have_count(1)

        # The flow list tells the four apart by marker and by the start of the comment.
        wanted = {
            "passthrough (not_browser_subresource)": "➡",
            "routed to VM 127.0.0.2": "🚀",
            "no_fallback (not_get)": "❌",
            "fallback: VM 404 browser_gone, CP re-issue 200": "🔄",
            "reissue for flow": "↩",
        }
        for text, marker in wanted.items():
            row = rows.filter(has_text=text)
            expect(row.first).to_be_visible()
            assert marker in row.first.inner_text(), f"marker {marker} missing on {text!r}"
        page.screenshot(path=str(ARTIFACTS / "mitmweb-flow-list.png"), full_page=True)

        # The detail's Comment tab holds the whole decision record.
        rows.filter(has_text="fallback: VM 404 browser_gone").first.click()
        detail = page.locator(".flow-detail")
        detail.get_by_text("Comment", exact=True).click()
        for line in (
            "fallback: VM 404 browser_gone, CP re-issue 200",
            f"· session_id: {sid}",
            "· vm_url: https://127.0.0.2:",
            "· vm_status: 404",
            "· cp_status: 200",
            f"· reissue_flow: {fallback['reissue_flow']}",
        ):
            expect(detail).to_contain_text(line)
        jwt = sim.jwt_for(sid)
        assert jwt not in detail.inner_text(), "the comment holds the jwt only redacted"
        page.screenshot(path=str(ARTIFACTS / "mitmweb-fallback-comment.png"), full_page=True)
        browser.close()
