"""Puts each routing decision on its flow (metadata, comment, marker) and in the log."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from typing import IO, Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.hooks import UpdateHook

from .bodies import media_type
from .comments import comment, marker, printable, redact_url
from .decisions import INJECTED_BUT_SENT, Decision
from .route_cache import Route, redact

logger = logging.getLogger(__name__)

METADATA_KEY = "browserrouting"
MAX_CHANGES_ON_RECORD = 10


def record_of(flow: http.HTTPFlow) -> dict[str, Any] | None:
    record = flow.metadata.get(METADATA_KEY)
    return record if isinstance(record, dict) else None


class JsonLinesLog:
    """Appends one JSON object per line; a path of "" turns it off."""

    def __init__(self) -> None:
        self.file: IO[str] | None = None
        self._failed = False

    def open(self, path: str) -> None:
        """Switch to `path` ("" closes); OSError when it cannot be opened for append."""
        new = None
        if path:  # backslashreplace: text that UTF-8 cannot hold is escaped, never fatal to a write
            expanded = os.path.expanduser(path)
            new = open(expanded, "a", encoding="utf-8", errors="backslashreplace", buffering=1)  # noqa: SIM115
        self.close()
        self.file = new
        self._failed = False

    def write(self, record: dict[str, Any]) -> None:
        """Never raises: a failing write (disk full, file gone) is reported once."""
        if self.file is None:
            return
        try:
            self.file.write(
                json.dumps({"ts": round(time.time(), 3), **record}, ensure_ascii=False, default=str) + "\n"
            )
        except (OSError, ValueError) as e:
            if not self._failed:
                logger.warning(f"browserrouting_log: cannot write: {e}")
            self._failed = True

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class DecisionRecorder:
    """Owns `browserrouting_log`; every other part reports decisions through it."""

    def __init__(self) -> None:
        self.log = JsonLinesLog()
        self.decisions: Counter[str] = Counter()  # final flow decisions and cache changes
        self.outbound: Counter[tuple[str, int]] = Counter()  # requests sent on, by upstream (host, port)
        self.redraws: set[asyncio.Task[None]] = set()

    def take_over(self, old: DecisionRecorder) -> None:
        """On a reload: the counters, and the log (reopened by configure; old in-flight work
        writes to it too)."""
        self.decisions, self.outbound, self.log = old.decisions, old.outbound, old.log

    def load(self, loader: Any) -> None:
        loader.add_option(
            "browserrouting_log", str, "",
            "Path of a JSON-lines file that gets one line per flow when its routing "
            "decision is final and one per route cache change; empty turns it off.",
        )  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        if "browserrouting_log" in updated:
            try:
                self.log.open(ctx.options.browserrouting_log)
            except OSError as e:
                raise exceptions.OptionsError(f"browserrouting_log: cannot open: {e}") from e

    def decide(self, flow: http.HTTPFlow, decision: str, reason: str | None = None, **fields: Any) -> None:
        """Set or update the flow's decision; fields given as None are left out. A new record's
        `url` is the URL the client sent: `url` when given, else the request's. The marker
        shows at once; the comment is written when the answer streams and when the flow ends."""
        record = record_of(flow)
        if record is None:
            url = fields.pop("url", None)
            record = self.start(flow, decision, reason, url if url is not None else flow.request.url)
        else:
            record["decision"], record["reason"] = decision, reason
        for key, value in fields.items():
            if value is not None:
                record[key] = redact_url(value) if key.endswith("url") else value
        flow.marked = marker(record)

    def start(
        self, flow: http.HTTPFlow, decision: str, reason: str | None, url: str, session_id: str | None = None
    ) -> dict[str, Any]:
        """The flow's new record, `url` being the URL the client sent; its marker shows at once.
        Most flows are decided by this alone (passthrough), so it builds the record in one go."""
        record = flow.metadata[METADATA_KEY] = {
            "decision": decision,
            "reason": reason,
            "session_id": session_id,
            "method": flow.request.method,
            "url": redact_url(url),
            "flow_id": flow.id,
        }
        flow.marked = marker(record)
        return record

    def cache_changed(
        self, decision: str, reason: str | None, route: Route, flow: http.HTTPFlow | None = None
    ) -> None:
        """A route was cached, evicted or refused: log it, and note it on the flow that caused it."""
        record = record_of(flow) if flow is not None else None
        change = {
            "decision": decision,
            "reason": reason,
            # Printable as they came, even a refused route's unencodable text.
            "session_id": printable(route.session_id),
            "name": printable(route.name) if route.name is not None else None,
            "base_url": printable(route.base_url),
            "jwt": printable(redact(route.jwt)),
            # The flow that caused the change; none for commands and the routes file.
            "method": flow.request.method if flow else None,
            "url": (record["url"] if record else redact_url(flow.request.url)) if flow else None,
            "flow_id": flow.id if flow else None,
        }
        if record is not None:
            # The first few on the record (its comment is rebuilt once, when the flow ends);
            # a page of 20,000 browsers is counted, not listed. The log has every one.
            record["cache_changes"] = record.get("cache_changes", 0) + 1
            if record["cache_changes"] <= MAX_CHANGES_ON_RECORD:
                record.setdefault("cache", []).append(
                    {k: change[k] for k in ("decision", "reason", "session_id")}
                )
        self.decisions[decision] += 1
        # Routes cached are summed up per flow by the router: one event-log line per route
        # would flood mitmproxy's log on a large list page. Every change is in the JSON-lines log.
        if decision != Decision.ROUTE_CACHED:
            level = logging.WARNING if decision == Decision.ROUTE_REFUSED else logging.INFO
            logger.log(level, f"{decision} {change['session_id']} -> {change['base_url']} ({reason})")
        self.log.write(change)

    def on_responseheaders(self, flow: http.HTTPFlow, record: dict[str, Any]) -> None:
        """An answer that streams: an event stream may stay open for long, show its comment meanwhile."""
        response = flow.response
        if response is not None and media_type(response.headers) == "text/event-stream":
            flow.comment = comment(record)

    def final(self, flow: http.HTTPFlow, record: dict[str, Any]) -> None:
        """The flow ended (answered, errored, killed): its decision is final, count and log it."""
        flow.comment = comment(record)
        self.decisions[record["decision"]] += 1
        # Replayed, read back, or answered (closed, held until dropped) by an injection rule: never sent.
        injected = record.get("injected")
        if flow.live and flow.is_replay != "response" and (injected is None or injected in INJECTED_BUT_SENT):
            d = flow.request.data
            self.outbound[d.host, d.port] += 1
        if self.log.file is not None:  # most runs keep no log: spared the call
            self.log.write(record)

    def refresh(self, flow: http.HTTPFlow, redraw: bool = True) -> None:
        """A record changed after its flow ended: log it again and have mitmweb redraw the flow."""
        record = record_of(flow)
        if record is None:
            return
        flow.marked, flow.comment = marker(record), comment(record)
        self.log.write(record)
        if redraw:
            task = asyncio.get_running_loop().create_task(ctx.master.addons.trigger_event(UpdateHook([flow])))
            self.redraws.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self.redraws.discard)

    def done(self) -> None:
        self.log.close()
