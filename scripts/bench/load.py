"""The load of the throughput figures: the request mix, and a process sending it to one proxy,
wrk with wrk.lua or, without wrk, this module run as a Python load generator
(`python -m bench.load PORT MIX_FILE NAME SECONDS CONNECTIONS` from scripts/) with the same mix
and keep-alive connections."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from mitmdump_runner import Mitmdump

from .base import API_KEY

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk.lua"
SCRIPTS = Path(__file__).resolve().parents[1]  # where `python -m bench.load` finds the package
PROXY_HEADER = "x-bench-proxy"  # names the proxy a request crossed, for the servers to count


def request_mix(cp: str, session_id: str) -> list[tuple[str, str, str]]:
    """Twenty requests (method, absolute URL, JSON body or ""): 16 non-browser API calls
    (10 GET, 6 POST), 1 browser metadata GET, 1 non-allowlisted subresource, 2 routed."""
    browser = f"{cp}/browsers/{session_id}"
    return [
        ("GET", f"{cp}/apps", ""),
        ("POST", f"{cp}/invocations", '{"app_name":"bench","action_name":"run","payload":"{}"}'),
        ("GET", browser, ""),
        ("GET", f"{cp}/deployments?limit=20", ""),
        ("GET", f"{browser}/fs/read_file?path=/tmp/bench.txt", ""),
        ("POST", f"{cp}/deployments", '{"entrypoint_rel_path":"main.py","region":"aws.us-east-1a"}'),
        ("GET", f"{cp}/invocations/inv_bench", ""),
        ("GET", f"{cp}/profiles", ""),
        ("POST", f"{cp}/profiles", '{"name":"bench"}'),
        ("GET", f"{browser}/replays", ""),
        ("GET", f"{cp}/apps?app_name=bench", ""),
        ("GET", f"{cp}/proxies", ""),
        ("POST", f"{browser}/process/exec", '{"command":"true","args":[]}'),
        ("POST", f"{cp}/invocations", '{"app_name":"bench","action_name":"check","payload":"{}"}'),
        ("GET", f"{cp}/extensions", ""),
        ("GET", f"{cp}/deployments/dep_bench", ""),
        ("POST", f"{cp}/apps", '{"name":"bench","version":"1"}'),
        ("GET", f"{cp}/invocations?limit=20", ""),
        ("POST", f"{cp}/proxies", '{"type":"datacenter","name":"bench"}'),
        ("GET", f"{cp}/apps/bench", ""),
    ]


def mix_text(mix: list[tuple[str, str, str]]) -> str:
    """The mix as the load generators read it: one request a line, `METHOD URL [JSON BODY]`."""
    return "".join(f"{m} {u} {b}".rstrip() + "\n" for m, u, b in mix)


def raw_request(method: str, url: str, body: str, name: str) -> bytes:
    """The absolute-form HTTP/1.1 request a client sends to a proxy, as wrk.lua renders it."""
    head = [
        f"{method} {url} HTTP/1.1",
        f"Host: {urlsplit(url).netloc}",
        f"Authorization: Bearer {API_KEY}",
        f"X-Bench-Proxy: {name}",
    ]
    if body:
        head += ["Content-Type: application/json", f"Content-Length: {len(body.encode())}"]
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


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
    requests = []
    for line in mix_file.read_text().splitlines():
        method, url, *body = line.split(" ", 2)
        requests.append(raw_request(method, url, body[0] if body else "", name))
    return requests


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
