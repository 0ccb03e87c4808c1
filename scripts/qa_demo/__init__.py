"""Replay the reference's live scoping QA, offline, through a real mitmdump with the addon.

Starts the local Kernel simulator (control plane + browser VM) and `mitmdump -s
addon/browser_routing.py` pointed at it (routing allowlist `telemetry`, fallback
registry at its default `telemetry/events`), then drives the official `kernel` SDK
through the proxy with the SDK's own routing turned off, so every routing decision is
the addon's:

  (A) create a browser and open its telemetry stream: routed to the VM host;
  (B) kill the browser on the VM only and re-open the stream on the stale route: the
      client gets the VM's 404 browser_gone, with zero control-plane re-issues;
  (C) read the killed browser's telemetry events: falls back to the control plane
      once, the route is evicted, and the next read goes straight to the control plane.

Then the live QA that the live service needs today (live_qa_steps.py), each with
its own `mitmweb -s addon/browser_routing.py`, driven through mitmweb's command API:

  (D) audit mode (`browserrouting_mode=audit`): the SDK routes by itself
      (KERNEL_BROWSER_ROUTING_SUBRESOURCES=telemetry) and the proxy judges each exchange:
      normal calls are clean; an injected 502 shows the SDK's retries on the VM; an
      injected browser_gone is reported as missing_fallback and the next call as
      stale_route, the expected findings for an SDK without a browser_gone fallback;
  (E) route mode against a second simulator whose VM answers 502 for a deleted browser,
      as the live VM proxy does: a browser deleted at the CP behind the proxy's back gives
      the VM's 502 and no fallback; with browser_gone injected the addon falls back once
      and the client gets the CP's answer (its 404 for the deleted browser; its page for a
      browser killed on the VM only, which the CP still serves); then a VM going down (502
      twice, then browser_gone) and a fallback whose CP call fails once, one rule each:
      no fallback on the 502s, one fallback, the client gets the CP's 503, no second
      re-issue.

Each step prints the addon's decision records for its flows, the outbound attempts per
host as the simulator counted them, and PASS/FAIL per expectation. At the end the demo
writes the QA report of its run (scripts/report.py: one HTML page from its decision logs)
and prints its path. Exits 1 if any expectation fails, 2 if a simulator, mitmdump or mitmweb
cannot start, 130 on Ctrl-C.

Run by `scripts/demo` (which sets up .venv first), or `.venv/bin/python scripts/qa_demo`.
Modules: harness (what every step prints through, the SDK client, the addon's options),
route_steps (A-C), live_qa_steps (D, E) and cli (starts everything, runs the steps, writes
the report).
"""
