"""Shared fixtures: the Kernel simulator and a real mitmdump with the addon, on loopback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from mitmdump_runner import Mitmdump
from simulator import Simulator

API_KEY = "sk-test-secret-key"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator() as simulator:
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


@pytest.fixture(scope="module")
def proxy(sim: Simulator) -> Iterator[Mitmdump]:
    with Mitmdump(proxy_options(sim)) as mitmdump:
        yield mitmdump
