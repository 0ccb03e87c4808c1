#!/usr/bin/env python3
"""Record the demo's scenarios (A, B, C of scripts/demo) as mitmproxy flow files.

    client --> mitmdump A (the addon, --mode upstream:B, -w client.mitm)
           --> mitmdump B (plain, no addon, -w upstream.mitm) --> simulator

B records what the servers answered to the requests the addon sent on (the VM's raw
404 browser_gone, the CP's answers, the fallback's re-issue): what `--server-replay`
needs to run the addon offline. A records what the client got, with the decisions in
each flow's metadata: the expected results of a replay. OUTDIR/scenario.json holds the
addon options used and the client's requests in order (the API key is the demo's fake one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

import httpx  # noqa: E402
import kernel  # noqa: E402
from mitmdump_runner import Mitmdump  # noqa: E402
from qa_demo.harness import API_KEY, SUBRESOURCES, Demo  # noqa: E402
from qa_demo.route_steps import RouteSteps  # noqa: E402
from simulator import Simulator  # noqa: E402


@contextlib.contextmanager
def sdk_routing_off() -> Iterator[None]:
    """The SDK reads this when a client is built: with it empty, every routing decision is the addon's."""
    saved = {k: os.environ.get(k) for k in ("KERNEL_BROWSER_ROUTING_SUBRESOURCES", "KERNEL_BASE_URL")}
    os.environ["KERNEL_BROWSER_ROUTING_SUBRESOURCES"] = ""
    os.environ.pop("KERNEL_BASE_URL", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def record(outdir: Path) -> dict[str, Any]:
    """Run the demo's scenarios through the A -> B chain; write the three files; return the scenario."""
    outdir.mkdir(parents=True, exist_ok=True)
    requests: list[dict[str, Any]] = []

    def capture(request: httpx.Request) -> None:
        requests.append(
            {
                "method": request.method,
                "url": str(request.url),
                "headers": [[k.decode(), v.decode()] for k, v in request.headers.raw],
                "body": request.read().decode(),
            }
        )

    with contextlib.ExitStack() as stack:  # stops the client, then A, then B, then the simulator
        sim = stack.enter_context(Simulator())
        options = {
            "browserrouting_control_plane": sim.cp_url,
            "browserrouting_vm_hosts": sim.vm_host,
            "browserrouting_subresources": SUBRESOURCES,
        }
        recorder = Mitmdump(
            {
                "ssl_verify_upstream_trusted_ca": sim.cert_path,
                # Stream every body (an SSE stays live through B) and still record it.
                "stream_large_bodies": "1",
                "store_streamed_bodies": "true",
            },
            extra_args=("-w", str(outdir / "upstream.mitm")),
            with_addon=False,
        )
        stack.callback(recorder.cleanup)
        recorder.start()
        proxy = Mitmdump(
            {
                **options,
                "ssl_verify_upstream_trusted_ca": str(recorder.ca_cert),
                "store_streamed_bodies": "true",  # client.mitm keeps the SSE the client got
            },
            extra_args=("--mode", f"upstream:{recorder.url}", "-w", str(outdir / "client.mitm")),
        )
        stack.callback(proxy.cleanup)
        proxy.start()
        with sdk_routing_off():
            http_client = kernel.DefaultHttpxClient(proxy=proxy.url, event_hooks={"request": [capture]})
            client = kernel.Kernel(
                api_key=API_KEY, base_url=sim.cp_url, http_client=http_client, timeout=10, max_retries=0
            )
        stack.callback(client.close)
        demo = Demo(sim, proxy, client)
        scenarios = RouteSteps(demo)
        for step in (scenarios.step_a, scenarios.step_b, scenarios.step_c):
            print(flush=True)
            step()
        if demo.failed:
            raise RuntimeError(f"the demo's expectations failed while recording: {demo.failed}")
    scenario = {"options": options, "requests": requests}
    (outdir / "scenario.json").write_text(json.dumps(scenario, indent=2) + "\n")
    return scenario


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/record.py",
        description=(
            "Record the demo's scenarios through mitmdump with the addon (upstream mode) and a plain "
            "recording mitmdump, against the local simulator. Writes OUTDIR/upstream.mitm (what the "
            "servers answered, for --server-replay), OUTDIR/client.mitm (what the client got, with "
            "the decisions) and OUTDIR/scenario.json (the addon options and the client's requests)."
        ),
    )
    parser.add_argument("outdir", type=Path, help="folder for the three files (created if missing)")
    args = parser.parse_args(argv)
    try:
        scenario = record(args.outdir)
    except RuntimeError as exc:
        print(f"record: {exc}", file=sys.stderr)
        return 1
    print(f"\nrecord: {len(scenario['requests'])} client requests recorded in {args.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
