"""What the live fault-injection tests share: one mitmweb per module, emptied of rules before each
test, and rules added through its command API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import proxy_options
from mitmdump_runner import Mitmdump
from simulator import Simulator


@pytest.fixture(scope="module")
def mitmweb(sim: Simulator) -> Iterator[Mitmdump]:
    with Mitmdump(proxy_options(sim), tool="mitmweb") as web:
        yield web


@pytest.fixture
def web(mitmweb: Mitmdump, fresh_sim: Simulator) -> Mitmdump:
    """The shared mitmweb with no rules, and the simulator's counts at zero."""
    mitmweb.command("set", "browserrouting_inject", "")
    mitmweb.command("browserrouting.inject.clear")
    return mitmweb


def inject(proxy: Mitmdump, *rules: str) -> None:
    for rule in rules:
        proxy.command("browserrouting.inject", rule)
