"""Fixtures and helpers for the simulator's own tests (tests/test_simulator_*.py): a fresh
simulator per test, httpx clients for its CP and VM, and the kernel SDK pointed at its CP."""

from __future__ import annotations

import ssl
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import kernel
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from simulator import Simulator  # noqa: E402

GONE = {"code": "browser_gone", "message": "browser not found"}
BAD_GATEWAY = {"code": "bad_gateway", "message": "browser unavailable"}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(sse_interval=0.05) as s:
        yield s


@pytest.fixture
def cp(sim: Simulator) -> Iterator[httpx.Client]:
    headers = {"Authorization": "Bearer test-token"}
    with httpx.Client(base_url=sim.cp_url, headers=headers, trust_env=False, timeout=10) as c:
        yield c


@pytest.fixture
def vm(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(verify=trust(sim.cert_path), trust_env=False, timeout=10) as c:
        yield c


@pytest.fixture
def sdk(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[kernel.Kernel]:
    # Empty: the SDK sends every call to the CP, which must proxy to the VM itself.
    monkeypatch.setenv("KERNEL_BROWSER_ROUTING_SUBRESOURCES", "")
    monkeypatch.delenv("KERNEL_BASE_URL", raising=False)
    monkeypatch.delenv("KERNEL_CUSTOM_HEADERS", raising=False)
    client = kernel_client(sim, httpx.Client(trust_env=False, timeout=10))
    yield client
    client.close()


def trust(cert_path: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cert_path)


def kernel_client(sim: Simulator, http_client: httpx.Client) -> kernel.Kernel:
    return kernel.Kernel(api_key="k", base_url=sim.cp_url, max_retries=0, http_client=http_client)


def vm_get(vm: httpx.Client, sim: Simulator, sub: str, jwt: str | None) -> httpx.Response:
    params = {} if jwt is None else {"jwt": jwt}
    return vm.get(f"{sim.base_url}/{sub}", params=params)
