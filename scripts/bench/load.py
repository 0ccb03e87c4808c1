"""The load of the throughput figures: the request mix, and a process sending it to one proxy,
wrk with wrk.lua or, without wrk, this module run as a Python load generator
(`python -m bench.load PORT MIX_FILE NAME SECONDS CONNECTIONS` from scripts/) with the same mix
and keep-alive connections.

The mix comes in two forms: every call addressed to the CP, as a client that leaves the routing
to the addon sends it, and the routed calls sent to the VM by the client itself, with the
route's jwt in the query and no API key, as an SDK routing by itself sends them."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote, urlsplit

from mitmdump_runner import Mitmdump

from .base import API_KEY

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk.lua"
SCRIPTS = Path(__file__).resolve().parents[1]  # where `python -m bench.load` finds the package
PROXY_HEADER = "x-bench-proxy"  # names the proxy a request crossed, for the servers to count


class Call(NamedTuple):
    """One request of the mix."""

    method: str
    url: str  # absolute
    body: str = ""  # JSON, or "" for none
    api_key: bool = True  # Authorization: Bearer API_KEY; a call to the VM carries the jwt instead


def request_mix(cp: str, session_id: str, vm: tuple[str, str] | None = None) -> list[Call]:
    """Twenty requests: 16 non-browser API calls (10 GET, 6 POST), 1 browser metadata GET, 1
    non-allowlisted subresource, 2 routed. The routed two go to the CP, or, given the route's
    `vm` (base_url, jwt), to the VM as an SDK routing by itself sends them: the URL the addon
    rewrites them to, with no Authorization."""
    browser = f"{cp}/browsers/{session_id}"

    def routed(method: str, tail: str, body: str = "") -> Call:
        if vm is None:
            return Call(method, f"{browser}/{tail}", body)
        base_url, jwt = vm
        query = f"jwt={quote(jwt, safe='')}"
        return Call(method, f"{base_url}/{tail}{'&' if '?' in tail else '?'}{query}", body, api_key=False)

    return [
        Call("GET", f"{cp}/apps"),
        Call("POST", f"{cp}/invocations", '{"app_name":"bench","action_name":"run","payload":"{}"}'),
        Call("GET", browser),
        Call("GET", f"{cp}/deployments?limit=20"),
        routed("GET", "fs/read_file?path=/tmp/bench.txt"),
        Call("POST", f"{cp}/deployments", '{"entrypoint_rel_path":"main.py","region":"aws.us-east-1a"}'),
        Call("GET", f"{cp}/invocations/inv_bench"),
        Call("GET", f"{cp}/profiles"),
        Call("POST", f"{cp}/profiles", '{"name":"bench"}'),
        Call("GET", f"{browser}/replays"),
        Call("GET", f"{cp}/apps?app_name=bench"),
        Call("GET", f"{cp}/proxies"),
        routed("POST", "process/exec", '{"command":"true","args":[]}'),
        Call("POST", f"{cp}/invocations", '{"app_name":"bench","action_name":"check","payload":"{}"}'),
        Call("GET", f"{cp}/extensions"),
        Call("GET", f"{cp}/deployments/dep_bench"),
        Call("POST", f"{cp}/apps", '{"name":"bench","version":"1"}'),
        Call("GET", f"{cp}/invocations?limit=20"),
        Call("POST", f"{cp}/proxies", '{"type":"datacenter","name":"bench"}'),
        Call("GET", f"{cp}/apps/bench"),
    ]


def mix_text(mix: list[Call]) -> str:
    """The mix as the load generators read it: one request a line, `METHOD URL AUTH [JSON BODY]`,
    AUTH `key` (the API key in Authorization) or `none`."""
    lines = (f"{c.method} {c.url} {'key' if c.api_key else 'none'} {c.body}".rstrip() for c in mix)
    return "".join(line + "\n" for line in lines)


def read_mix(mix_file: Path) -> list[Call]:
    calls = []
    for line in mix_file.read_text().splitlines():
        method, url, auth, *body = line.split(" ", 3)
        calls.append(Call(method, url, body[0] if body else "", auth == "key"))
    return calls


def raw_request(call: Call, name: str) -> bytes:
    """The absolute-form HTTP/1.1 request a client sends to a proxy, as wrk.lua renders it."""
    head = [f"{call.method} {call.url} HTTP/1.1", f"Host: {urlsplit(call.url).netloc}"]
    if call.api_key:
        head.append(f"Authorization: Bearer {API_KEY}")
    head.append(f"X-Bench-Proxy: {name}")
    if call.body:
        head += ["Content-Type: application/json", f"Content-Length: {len(call.body.encode())}"]
    return ("\r\n".join(head) + "\r\n\r\n" + call.body).encode()


class LoadGenerator:
    """One process sending the mix to one proxy over `connections` keep-alive connections."""

    def __init__(self, kind: str, proxy: Mitmdump, name: str, mix_file: Path, seconds: int, conns: int):
        if kind == "wrk":
            cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", str(WRK_SCRIPT)]
            cmd += [proxy.url, "--", str(mix_file), name]
        else:  # `-m` puts the working directory, scripts/, on the child's sys.path
            cmd = [sys.executable, "-m", "bench.load", str(proxy.port), str(mix_file), name, str(seconds)]
            cmd.append(str(conns))
        self.name = name
        self.process = subprocess.Popen(
            cmd, cwd=SCRIPTS, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def result(self) -> int:
        """Requests the generator completed, by its own count."""
        out, _ = self.process.communicate(timeout=120)
        found = re.search(r"bench_(?:wrk|load): requests=(\d+)", out)
        if self.process.returncode != 0 or found is None:
            raise RuntimeError(f"load generator for {self.name} failed:\n{out}")
        return int(found.group(1))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bool:
    """Send one request and read its whole answer; False when the server closes the connection."""
    writer.write(request)
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
    length = re.search(r"\r\ncontent-length: *(\d+)", head)
    if length:
        await reader.readexactly(int(length.group(1)))
    elif "transfer-encoding: chunked" in head:
        while size := int((await reader.readline()).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    return "\r\nconnection: close" not in head


async def _load_connection(
    port: int, requests: list[bytes], deadline: float, done: list[int], index: int
) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while time.monotonic() < deadline:
        if writer is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert reader is not None
        request = requests[index % len(requests)]
        index += 1
        try:
            kept = await asyncio.wait_for(
                exchange(reader, writer, request), max(0.1, deadline - time.monotonic())
            )
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            writer = None
            continue
        done[0] += 1
        if not kept:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


def starts(requests: list[bytes], conns: int) -> list[int]:
    """Where in the mix each connection starts: spread over it."""
    return [i * len(requests) // conns for i in range(conns)]


def raw_mix(mix_file: Path, name: str) -> list[bytes]:
    """The mix file's requests as a client sends them to the proxy."""
    return [raw_request(call, name) for call in read_mix(mix_file)]


async def _load(port: int, requests: list[bytes], seconds: float, conns: int) -> int:
    done = [0]
    deadline = time.monotonic() + seconds
    connections = (_load_connection(port, requests, deadline, done, i) for i in starts(requests, conns))
    await asyncio.gather(*connections)
    return done[0]


def load_child(port: str, mix_file: str, name: str, seconds: str, conns: str) -> int:
    """The Python load generator (when wrk is missing): prints `bench_load: requests=N`."""
    count = asyncio.run(_load(int(port), raw_mix(Path(mix_file), name), float(seconds), int(conns)))
    print(f"bench_load: requests={count}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(load_child(*sys.argv[1:]))
