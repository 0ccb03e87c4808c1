"""Runs a real `mitmdump -s addon/browser_routing.py` on loopback, for tests and the demo."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENTRY = ROOT / "addon" / "browser_routing.py"
_LISTENING = re.compile(r"listening at \*?([\d.]+):(\d+)")
_WEB_LISTENING = re.compile(r"Web server listening at (\S+)")
_XSRF = "5e1f0c0ffee5e1f0"  # mitmweb checks that the xsrf cookie and header agree


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CommandFailed(Exception):
    """A mitmproxy command answered with an error."""


class Mitmdump:
    """`mitmdump` with the addon (unless `with_addon=False`), listening on 127.0.0.1 on a free port.

    `options` become `--set name=value`; the decision log goes to `self.log_path`.
    """

    def __init__(
        self,
        options: dict[str, str],
        *,
        tool: str = "mitmdump",
        extra_args: tuple[str, ...] = (),
        with_addon: bool = True,
        wrapper: tuple[str, ...] = (),  # a command to run it under (valgrind, for the bench)
    ):
        self.workdir = Path(tempfile.mkdtemp(prefix="browserrouting-"))
        self.log_path = self.workdir / "decisions.jsonl"
        self.options = {"confdir": str(self.workdir), **options}
        if with_addon:
            self.options.setdefault("browserrouting_log", str(self.log_path))
        self.with_addon = with_addon
        self.wrapper = wrapper
        self.tool = tool
        if tool == "mitmweb":  # its UI on loopback too, on a free port (it cannot take port 0)
            web = {"web_host": "127.0.0.1", "web_port": str(free_port()), "web_open_browser": "false"}
            self.options = {**web, **self.options}
        self.extra_args = extra_args
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self.port = 0
        self.web_url = ""  # mitmweb's UI address, with its access token
        self._web: Any = None  # an httpx.Client on mitmweb's API, once a command is run

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> Path:
        """mitmproxy's CA, which clients trust to talk HTTPS through the proxy."""
        return self.workdir / "mitmproxy-ca-cert.pem"

    def start(self, timeout: float = 20) -> Mitmdump:
        exe = Path(sys.executable).parent / self.tool
        args = [str(exe), "--listen-host", "127.0.0.1", "-p", "0"]
        if self.with_addon:
            args += ["-s", str(ENTRY)]
        for name, value in self.options.items():
            args += ["--set", f"{name}={value}"]
        self.process = subprocess.Popen(
            [*self.wrapper, *args, *self.extra_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        ready = threading.Event()
        threading.Thread(target=self._read_output, args=(ready,), daemon=True).start()
        # The script loads (and its options are checked) before the proxy says it listens.
        if not ready.wait(timeout) or not self.port or any("error in script" in x for x in self.output):
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.stop()
            raise RuntimeError(f"{self.tool} did not start:\n" + "".join(self.output))
        return self

    def _read_output(self, ready: threading.Event) -> None:
        assert self.process and self.process.stdout
        for line in self.process.stdout:
            self.output.append(line)
            if not self.port and (m := _LISTENING.search(line)):
                self.port = int(m.group(2))
            if not self.web_url and (m := _WEB_LISTENING.search(line)):
                self.web_url = m.group(1)
            if self.port and (self.web_url or self.tool != "mitmweb"):
                ready.set()
        ready.set()  # exited before listening

    def command(self, name: str, *arguments: str) -> Any:
        """Run a mitmproxy command (`browserrouting.inject`, ...) through mitmweb's HTTP API, as
        its command bar does (tool="mitmweb" only); CommandFailed carries mitmproxy's message."""
        import httpx

        if self._web is None:
            base = httpx.URL(self.web_url)
            self._web = httpx.Client(base_url=f"{base.scheme}://{base.host}:{base.port}", trust_env=False)
            self._web.get("/", params={"token": base.params["token"]})  # the auth cookie
            self._web.cookies.set("_mitmproxy_xsrf", _XSRF)
        got = self._web.post(
            f"/commands/{name}", json={"arguments": list(arguments)}, headers={"X-XSRFToken": _XSRF}
        )
        answer = got.json()
        if "error" in answer:
            raise CommandFailed(answer["error"])
        return answer["value"]

    def stop(self) -> int | None:
        if self._web is not None:
            self._web.close()
            self._web = None
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def records(
        self,
        decision: str | None = None,
        session_id: str | None = None,
        wait_for: int = 1,
        timeout: float = 5,
    ) -> list[dict[str, Any]]:
        """Lines of the decision log, of one decision and session if given, waiting for `wait_for` of them."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.log_path.read_text().splitlines() if self.log_path.exists() else []
            found = [
                r
                for r in map(json.loads, lines)
                if decision in (None, r["decision"]) and session_id in (None, r["session_id"])
            ]
            if len(found) >= wait_for or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def __enter__(self) -> Mitmdump:
        return self.start()

    def cleanup(self) -> None:
        """Stop, and remove the working folder (mitmproxy's CA, the decision log)."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()
