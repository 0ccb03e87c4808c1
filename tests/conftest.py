"""Shared fixtures: the Kernel simulator, a real mitmdump with the addon on loopback, a scripted CP,
and the addon's parts in taddons (`h`: the harness of addon_harness.py; `script`: the entry script)."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from addon_harness import Harness, Wired, assert_no_secrets, running, wired
from hardening_support import ScriptedServer, crashes
from known import TEST_OPTIONS
from mitmdump_runner import Mitmdump
from simulator import Simulator

from addon.paths import SUBRESOURCES_ENV


@pytest.fixture(scope="module")
def sim(request: pytest.FixtureRequest) -> Iterator[Simulator]:
    """One simulator per module, built with the module's `SIMULATOR_OPTIONS` if it has them."""
    with Simulator(**getattr(request.module, "SIMULATOR_OPTIONS", {})) as simulator:
        yield simulator


@pytest.fixture
def fresh_sim(sim: Simulator) -> Simulator:
    sim.reset()
    return sim


def proxy_options(sim: Simulator, **extra: str) -> dict[str, str]:
    """The options QA would pass to point the addon at the simulator."""
    return {
        "browserrouting_control_plane": sim.cp_url,
        "browserrouting_vm_hosts": "127.0.0.2",
        "browserrouting_subresources": "telemetry,process,fs,curl",
        "ssl_verify_upstream_trusted_ca": str(sim.cert_path),
        **extra,
    }


@pytest.fixture
def no_hook_raises(proxy: Mitmdump) -> Iterator[None]:
    """For modules that mark every test with it: no hook of the addon raised meanwhile."""
    since = len(proxy.output)
    yield
    assert crashes(proxy, since) == []


@pytest.fixture(scope="module")
def proxy(sim: Simulator) -> Iterator[Mitmdump]:
    with Mitmdump(proxy_options(sim)) as mitmdump:
        yield mitmdump


@pytest.fixture(scope="module")
def cp() -> Iterator[ScriptedServer]:
    """A scripted control plane for answers the simulator never gives (hardening_support.py)."""
    with ScriptedServer() as server:
        yield server


@pytest.fixture
async def h(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Harness]:
    """The addon's parts in taddons, with TEST_OPTIONS and a decision log in tmp_path."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv(SUBRESOURCES_ENV, raising=False)
    with running(tmp_path, monkeypatch, TEST_OPTIONS) as harness:
        yield harness
    # Every test doubles as a secrets check: metadata, comments, the log file, the logs.
    assert_no_secrets(harness, caplog.text)


@pytest.fixture
def script() -> Iterator[Wired]:
    """The entry script's addons, loaded and wired as mitmdump does, in taddons."""
    yield from wired()
