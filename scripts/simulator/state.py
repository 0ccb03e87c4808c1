"""The simulator's state, shared by its loop and any caller's thread: browsers (the CP's list,
the VM's live and gone jwts), the controls' settings, and the per-side request records."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ipaddress
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .shapes import DELETED_BROWSER_ANSWERS, Session, browser_obj, now_iso, sha256

SIDES = ("cp", "vm")


def require_loopback(host: str) -> None:
    """The simulator must never listen outside 127.0.0.0/8."""
    try:
        addr = ipaddress.IPv4Address(host)
    except ValueError as exc:
        raise ValueError(f"host must be an IPv4 loopback literal, got {host!r}") from exc
    if not addr.is_loopback:
        raise ValueError(f"host must be in 127.0.0.0/8, got {host!r}")


def check_deleted_browser(answer: object) -> str:
    if answer not in DELETED_BROWSER_ANSWERS:
        raise ValueError(f"deleted_browser must be 'gone' or '502', got {answer!r}")
    return str(answer)


@dataclass
class Fault:
    """Requests on `side` ("vm", "cp" or "both") whose path contains `path_contains` get
    `status`, or a reset; `times` of them (None: until cleared)."""

    status: int | None
    reset: bool
    path_contains: str | None
    side: str
    times: int | None

    def __post_init__(self) -> None:
        if self.side not in ("vm", "cp", "both"):
            raise ValueError("side must be 'vm', 'cp' or 'both'")
        if self.status is not None and not 400 <= int(self.status) <= 599:
            raise ValueError("status must be a 4xx/5xx code")
        if self.times is not None and int(self.times) < 1:
            raise ValueError("times must be >= 1")
        self.status = None if self.status is None else int(self.status)
        self.reset = bool(self.reset)
        self.times = None if self.times is None else int(self.times)


@dataclass
class SideStats:
    count: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)


class Flag:
    """A bool that any thread sets and coroutines on the simulator's loop wait for."""

    def __init__(self, value: bool) -> None:
        self._value = value
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Future[None]] = set()

    def bind(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self._loop = loop

    def is_set(self) -> bool:
        return self._value

    def clear(self) -> None:
        self._value = False  # waiters only wait for True: nothing to wake

    def set(self) -> None:
        self._value = True
        loop = self._loop
        if loop is None:
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake()
        else:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until set (True), or for `timeout` seconds (then the value, usually False)."""
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            return self._value
        finally:
            self._waiters.discard(waiter)
        return True


class State:
    """Everything the CP, the VM and the controls share; every method is thread-safe."""

    def __init__(self, vm_host: str, sse_interval: float, sse_count: int, deleted_browser: str) -> None:
        self.vm_host = vm_host
        self.vm_port = 0  # known once the VM listens
        self.sse_interval = sse_interval
        self.sse_count = sse_count
        self.released = Flag(True)  # SSE streams go on (hold_streams clears it)
        self.stopping = Flag(False)
        self._lock = threading.Lock()
        self._deleted_browser_default = check_deleted_browser(deleted_browser)
        self._deleted_browser = self._deleted_browser_default
        self._sessions: dict[str, Session] = {}  # CP view, insertion-ordered
        self._vm_live: dict[str, str] = {}  # jwt -> session_id
        self._vm_gone: dict[str, str] = {}  # jwt -> session_id, deleted or killed on the VM
        self._fault: Fault | None = None
        self._latency = {"cp": 0.0, "vm": 0.0}
        self._gzip_gone = False
        self._stats = {side: SideStats() for side in SIDES}
        self._by_host: dict[str, int] = {}
        self._gen = 0  # bumped by reset() so in-flight requests don't touch new stats

    def browser_obj(self, sess: Session) -> dict[str, Any]:
        return browser_obj(sess, f"{self.vm_host}:{self.vm_port}")

    # -- browsers ----------------------------------------------------------

    @property
    def browsers(self) -> Mapping[str, dict[str, Any]]:
        """Snapshot of CP-known browsers (session_id -> browser object), read-only."""
        with self._lock:
            sessions = list(self._sessions.values())
        return MappingProxyType({s.session_id: self.browser_obj(s) for s in sessions})

    def sessions(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    def new_session(self, name: str | None, pool: str | None) -> Session:
        """A new browser; ValueError if the name is taken."""
        with self._lock:
            if name is not None and any(s.name == name for s in self._sessions.values()):
                raise ValueError(f"a browser named {name!r} already exists")
            sess = Session(
                session_id=secrets.token_hex(12),
                # Deliberately contains '+', '/' and '=' so URL-encoding bugs show up.
                jwt=f"tok+{secrets.token_hex(16)}/x=",
                name=name,
                pool=pool,
                created_at=now_iso(),
            )
            self._sessions[sess.session_id] = sess
            self._vm_live[sess.jwt] = sess.session_id
        return sess

    def lookup(self, id_or_name: str) -> Session | None:
        with self._lock:
            sess = self._sessions.get(id_or_name)
            if sess is None:
                sess = next((s for s in self._sessions.values() if s.name == id_or_name), None)
            return sess

    def delete(self, sess: Session) -> None:
        """The CP forgets it; the VM answers its jwt as for a deleted browser."""
        with self._lock:
            self._sessions.pop(sess.session_id, None)
            self._vm_live.pop(sess.jwt, None)
            self._vm_gone[sess.jwt] = sess.session_id

    def kill_on_vm(self, session_id_or_name: str) -> None:
        """The VM forgets it (answered as a deleted browser); the CP still lists and serves it."""
        sess = self.lookup(session_id_or_name)
        if sess is None:
            raise KeyError(session_id_or_name)
        with self._lock:
            self._vm_live.pop(sess.jwt, None)
            self._vm_gone[sess.jwt] = sess.session_id

    def vm_session(self, jwt: str) -> tuple[str | None, bool]:
        """(the live session the VM serves for this jwt, whether the jwt's browser is gone)."""
        if not jwt:
            return None, False
        with self._lock:
            return self._vm_live.get(jwt), jwt in self._vm_gone

    def vm_alive(self, jwt: str, session_id: str) -> bool:
        with self._lock:
            return self._vm_live.get(jwt) == session_id

    # -- settings ----------------------------------------------------------

    def set_fault(self, fault: Fault | None) -> None:
        with self._lock:
            self._fault = fault

    def take_fault(self, side: str, path: str) -> Fault | None:
        """The fault this request meets, if any (counting it against `times`)."""
        with self._lock:
            fault = self._fault
            if fault is None or fault.side not in (side, "both"):
                return None
            if fault.path_contains is not None and fault.path_contains not in path:
                return None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._fault = None
            return copy.copy(fault)

    def set_latency(self, cp: float = 0, vm: float = 0) -> None:
        with self._lock:
            self._latency = {"cp": float(cp), "vm": float(vm)}

    def latency(self, side: str) -> float:
        with self._lock:
            return self._latency[side]

    def set_gzip_gone(self, enabled: bool) -> None:
        with self._lock:
            self._gzip_gone = bool(enabled)

    def set_deleted_browser(self, answer: str) -> None:
        answer = check_deleted_browser(answer)
        with self._lock:
            self._deleted_browser = answer

    def deleted_answer(self) -> tuple[str, bool]:
        """(what the VM answers for a deleted browser, whether browser_gone bodies are gzipped)."""
        with self._lock:
            return self._deleted_browser, self._gzip_gone

    def hold_streams(self, hold: bool = True) -> None:
        if hold:
            self.released.clear()
        else:
            self.released.set()

    def reset(self) -> None:
        with self._lock:
            self._stats = {side: SideStats() for side in SIDES}
            self._by_host = {}
            self._gen += 1
            self._fault = None
            self._latency = {"cp": 0.0, "vm": 0.0}
            self._gzip_gone = False
            self._deleted_browser = self._deleted_browser_default
        self.released.set()

    # -- request records ---------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {
                side: {
                    "count": st.count,
                    "in_flight": st.in_flight,
                    "max_in_flight": st.max_in_flight,
                    "requests": copy.deepcopy(st.requests),
                }
                for side, st in self._stats.items()
            }
            out["by_host"] = dict(self._by_host)
        return out

    def begin(
        self, side: str, host_key: str, method: str, path: str, query: str, headers: Mapping[str, str]
    ) -> tuple[dict[str, Any], int]:
        """Record a request as it arrives: (its record, the stats generation it counts in)."""
        hdrs: dict[str, str] = {}
        for key, value in headers.items():
            k = key.lower()
            hdrs[k] = f"{hdrs[k]}, {value}" if k in hdrs else value
        rec: dict[str, Any] = {
            "method": method,
            "path": path,
            "query": query,
            "headers": hdrs,
            "body_sha256": sha256(b""),
            "body_len": 0,
            "status": None,
            "t_start": time.time(),
            "t_end": None,
        }
        if side == "vm":
            rec["via_cp"] = hdrs.get("x-sim-via") == "control-plane"
        with self._lock:
            st = self._stats[side]
            st.count += 1
            st.in_flight += 1
            st.max_in_flight = max(st.max_in_flight, st.in_flight)
            st.requests.append(rec)
            self._by_host[host_key] = self._by_host.get(host_key, 0) + 1
            return rec, self._gen

    def record_body(self, rec: dict[str, Any], body: bytes) -> None:
        with self._lock:
            rec["body_sha256"] = sha256(body)
            rec["body_len"] = len(body)

    def finish(self, side: str, rec: dict[str, Any], gen: int, status: int) -> None:
        with self._lock:
            rec["t_end"] = time.time()
            rec["status"] = status or None
            if gen == self._gen:  # else reset() replaced the stats meanwhile
                self._stats[side].in_flight -= 1
