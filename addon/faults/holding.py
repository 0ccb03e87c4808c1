"""Requests held in the proxy (`delay`, `@MS`, `hang`) and answers cut short (`cut`).

A held request waits in its own `request` hook: mitmproxy runs each hook of each flow as a task
of its own and only that flow waits for it, so a hold never blocks the event loop or other
flows. A held flow is let go early, and killed, when its client leaves (mitmproxy would only see
that once the hook returns), when it is killed elsewhere (mitmweb's kill button), or, for
`hang`, when the rules are cleared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from mitmproxy import http

from .steps import Step

logger = logging.getLogger(__name__)

# How often a held flow looks whether it was killed: mitmweb's kill button tells no addon.
CHECK_KILLED_S = 0.5


@dataclass(eq=False)
class Held:
    flow: http.HTTPFlow
    step: Step
    released: asyncio.Event = field(default_factory=asyncio.Event)
    why: str = ""


class Holds:
    """The flows held now, by flow id."""

    def __init__(self) -> None:
        self.by_flow: dict[str, Held] = {}

    def __bool__(self) -> bool:
        return bool(self.by_flow)

    async def hold(self, flow: http.HTTPFlow, step: Step) -> bool:
        """Hold the flow for the step's @MS (`hang`: until released). True when the time ran
        out; False when the flow was let go early, and is killed."""
        held = self.by_flow[flow.id] = Held(flow, step)
        loop = asyncio.get_running_loop()
        until = None if step.ms is None else loop.time() + step.ms / 1000
        try:
            while not held.released.is_set() and flow.error is None:
                left = CHECK_KILLED_S if until is None else min(CHECK_KILLED_S, until - loop.time())
                if left <= 0:
                    return True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await held.released.wait()
        finally:
            del self.by_flow[flow.id]
        logger.info(f"injected {step} on flow {flow.id} let go: {held.why or 'killed'}")
        if flow.killable:
            flow.kill()
        return False

    def release(self, matches: Callable[[Held], bool], why: str) -> None:
        for held in self.by_flow.values():
            if matches(held) and not held.released.is_set():
                held.why = why
                held.released.set()


class CutBody:
    """A streamed body that stops short: the first half of the first chunk goes to the client,
    the rest is dropped; the flow is then killed, which closes the client's connection before
    its body ends. Chunks are returned as lists: an empty bytes chunk would end a chunked body
    cleanly, which is what a cut must not do."""

    def __init__(self) -> None:
        self.passed = False

    def __call__(self, data: bytes) -> list[bytes]:
        if self.passed or len(data) < 2:
            return []
        self.passed = True
        return [data[: len(data) // 2]]
