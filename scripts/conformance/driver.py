"""A driver process: the runner's side of the driver protocol (docs/conform.md).

The runner writes one JSON request a line to the driver's stdin and waits for the answer line
with the same `id` on its stdout; the driver's stderr goes to a file beside the case results.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .clients import Client

OPS = ("create", "retrieve", "list", "delete", "acquire", "release", "call")
HELLO_TIMEOUT = 60  # seconds: a driver's first start may compile or load a lot
STOP_TIMEOUT = 5


class DriverError(Exception):
    """The driver failed: it died, answered nothing in time, or answered what is no answer."""


@dataclass(frozen=True)
class Hello:
    """What the driver said of itself."""

    label: str  # the client and its version, e.g. "kernel 0.131.0"
    can: frozenset[str]  # ops and capabilities (`stream`, `routing`)
    cannot: dict[str, str] = field(default_factory=dict)  # capability -> why, where the driver says

    def why_not(self, need: str) -> str | None:
        """None when the driver can; else why it cannot."""
        if need in self.can:
            return None
        return self.cannot.get(need) or f"the driver cannot {need} (it does not list it in its hello)"


class Driver:
    def __init__(self, client: Client, settings: dict[str, str], stderr_path: Path) -> None:
        self.client = client
        self.env = {**os.environ, **settings, **client.env}
        self.stderr_path = stderr_path
        self.process: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.next_id = 0
        self.hello: Hello | None = None

    def start(self) -> Hello:
        self.stderr_path.parent.mkdir(parents=True, exist_ok=True)
        with self.stderr_path.open("a", encoding="utf-8") as stderr:
            try:
                self.process = subprocess.Popen(
                    self.client.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                    text=True, encoding="utf-8", env=self.env, start_new_session=True,
                )  # fmt: skip
            except OSError as e:
                raise DriverError(f"cannot start {' '.join(self.client.argv)}: {e}") from None
        assert self.process.stdout is not None
        self.lines = queue.Queue()
        threading.Thread(target=_pump, args=(self.process.stdout, self.lines), daemon=True).start()
        answer = self.ask("hello", HELLO_TIMEOUT)
        can = answer.get("can")
        if not isinstance(can, list) or not all(isinstance(c, str) for c in can):
            raise DriverError(f"its hello has no list of what it can do ('can'): {_short(answer)}")
        cannot = answer.get("cannot")
        cannot = cannot if isinstance(cannot, dict) else {}
        name = " ".join(str(answer[k]) for k in ("client", "version") if answer.get(k))
        self.hello = Hello(
            name or self.client.spec, frozenset(can), {str(k): str(v) for k, v in cannot.items()}
        )
        return self.hello

    def ask(self, op: str, timeout: float, **fields: Any) -> dict[str, Any]:
        """Send one request and wait for its answer; DriverError when there is none."""
        if self.process is None or self.process.stdin is None:
            raise DriverError("the driver is not running")
        self.next_id += 1
        request = {"id": self.next_id, "op": op, **fields}
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except OSError:
            raise DriverError(f"the driver exited ({self.exit_text()})") from None
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise DriverError(f"no answer to {op} within {timeout:g} s") from None
        if line is None:
            raise DriverError(f"the driver exited during {op} ({self.exit_text()})")
        try:
            answer = json.loads(line)
        except ValueError:
            raise DriverError(f"its answer to {op} is not JSON: {line[:200]!r}") from None
        if not isinstance(answer, dict) or answer.get("id") != self.next_id:
            raise DriverError(f"its answer to {op} (id {self.next_id}) is not one: {_short(answer)}")
        if "driver_error" in answer:
            raise DriverError(f"the driver could not {op}: {answer['driver_error']}")
        return answer

    def exit_text(self) -> str:
        code = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = self.process.wait(2) if self.process else None  # it closed its stdout: it is ending
        tail = ""
        if self.stderr_path.exists():
            lines = self.stderr_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            tail = f"; its stderr ends: {' | '.join(lines[-3:])}" if lines else ""
        return f"exit status {code}{tail}"

    def stop(self) -> None:
        """Ask it to close, then end it (its whole process group: a shell script's curl too)."""
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if process.poll() is None and process.stdin is not None:
                process.stdin.write(json.dumps({"id": 0, "op": "close"}) + "\n")
                process.stdin.close()
            process.wait(STOP_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            with contextlib.suppress(OSError):  # it ended meanwhile
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        if line.strip():
            lines.put(line)
    lines.put(None)


def _short(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 200 else text[:200] + "..."
