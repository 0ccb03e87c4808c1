"""Falls back to the control plane, exactly once, when the VM says the browser is gone."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable
from typing import Any, cast
from urllib.parse import urlsplit

from mitmproxy import ctx, exceptions, http
from mitmproxy.addons.clientplayback import ReplayHandler
from mitmproxy.options import Options

from . import paths
from .bodies import may_be_gone, read_404_body
from .decisions import Decision
from .fallback_rule import no_fallback_reason
from .recorder import DecisionRecorder
from .router import ClientRequest, Router

logger = logging.getLogger(__name__)


class ReissueOptions:
    """mitmproxy's options as the re-issue's connection sees them: all of them (upstream
    mode, TLS), except that its answer is never streamed. Its body becomes the client's
    answer, and mitmproxy switches to streaming midway through a body larger than
    `stream_large_bodies`, which no hook can undo."""

    def __init__(self, options: Options) -> None:
        self._options = options

    def __getattr__(self, name: str) -> Any:
        return None if name == "stream_large_bodies" else getattr(self._options, name)


def fallback_failed(why: str) -> http.Response:
    body = {"code": "fallback_failed", "message": f"control-plane fallback failed: {why}"}
    return http.Response.make(502, json.dumps(body), {"Content-Type": "application/json"})


class ControlPlaneFallback:
    """Streams routed answers, and re-issues eligible browser_gone GETs to the CP."""

    def __init__(self, router: Router, recorder: DecisionRecorder) -> None:
        self.router = router
        self.recorder = recorder
        self.eligible: tuple[str, ...] = ()

    def take_over(self, old: ControlPlaneFallback) -> None:
        """On a reload: nothing to carry; a re-issue in flight finishes on the old part, and the
        registry comes from the options again."""

    def load(self, loader: Any) -> None:
        loader.add_option(
            "browserrouting_fallback", str, "telemetry/events",
            "Comma-separated browser subresource paths ({subresource}{suffix}) whose GETs fall "
            "back to the control plane when the VM answers 404 browser_gone.",
        )  # fmt: skip

    def configure(self, updated: set[str]) -> None:
        if "browserrouting_fallback" in updated:
            try:
                self.eligible = paths.parse_path_entries(ctx.options.browserrouting_fallback)
            except ValueError as e:
                raise exceptions.OptionsError(f"browserrouting_fallback: {e}") from None

    def on_responseheaders(self, flow: http.HTTPFlow, record: dict[str, Any]) -> None:
        """A routed answer, or a re-issue's."""
        assert flow.response is not None
        if record["decision"] == Decision.REISSUE:
            flow.response.stream = False  # its body is copied to the flow it serves
        elif record["decision"] == Decision.ROUTED:
            # Only a 404 to an eligible GET is read (browser_gone?); all else, SSE included, flows live.
            flow.response.stream = not (may_be_gone(flow.response) and self.eligible_get(flow))
            self.map_locations(flow, record)

    def map_locations(self, flow: http.HTTPFlow, record: dict[str, Any]) -> None:
        """A VM redirect must not send the client to the CP with the jwt (see paths.map_location)."""
        assert flow.response is not None
        # Read off the raw fields: mitmproxy's lookup decodes every header name.
        present = {name.lower() for name, _ in flow.response.headers.fields}
        names = [name for name in ("location", "content-location") if name.encode() in present]
        cp_path = urlsplit(record["url"]).path if names else ""
        sub = paths.parse_subresource_path(cp_path) if names else None
        if sub is None:
            return
        for name in names:
            mapped = paths.map_location(flow.response.headers[name], flow.request.url, sub.tail, cp_path)
            if mapped is not None:
                flow.response.headers[name] = mapped

    def eligible_get(self, flow: http.HTTPFlow) -> bool:
        """Whether a routed flow is a GET to a fallback-eligible path (judged on the client's path)."""
        original = self.router.originals.get(flow.id)  # kept for routed GETs only
        return original is not None and paths.is_fallback_eligible(original.tail, self.eligible)

    def on_response(self, flow: http.HTTPFlow, record: dict[str, Any]) -> Awaitable[None] | None:
        """Decide a routed answer; the awaitable of the CP re-issue when it falls back."""
        if flow.response is None or not flow.live:
            return None  # offline reads (mitmdump -nr) keep the decision they were recorded with
        if record["decision"] == Decision.REISSUE:
            self.recorder.decide(flow, Decision.REISSUE, cp_status=flow.response.status_code)
            return None
        if record["decision"] != Decision.ROUTED:
            return None
        eligible = self.eligible_get(flow)
        original = self.router.originals.pop(flow.id, None)
        status = flow.response.status_code
        if status < 400:
            self.recorder.decide(flow, Decision.ROUTED, vm_status=status)
            return None
        body = read_404_body(flow.response) if status == 404 else None
        reason = no_fallback_reason(flow.request.method, eligible, status, body)
        if reason is not None:
            self.recorder.decide(flow, Decision.NO_FALLBACK, reason, vm_status=status)
            return None
        assert original is not None  # eligible implies it
        self.router.evict(record["session_id"], "browser_gone", flow)
        return self.reissue(flow, original, vm_status=status)

    async def reissue(self, flow: http.HTTPFlow, original: ClientRequest, **fields: Any) -> None:
        """Send the client's own request to the CP as a flow of its own; answer with its response."""
        copy = flow.copy()
        original.restore(copy.request)
        copy.response = None
        copy.error = None
        copy.metadata = {}
        copy.comment = ""
        copy.is_replay = "request"
        self.recorder.decide(
            copy, Decision.REISSUE, session_id=flow.metadata["browserrouting"]["session_id"], serves=flow.id
        )
        self.recorder.decide(flow, Decision.FALLBACK, reissue_flow=copy.id, **fields)
        await ReplayHandler(copy, cast(Options, ReissueOptions(ctx.options))).replay()
        if copy.response is not None and copy.error is None and copy.response.raw_content is not None:
            flow.response = copy.response.copy()
            self.recorder.decide(flow, Decision.FALLBACK, cp_status=copy.response.status_code)
        else:  # no answer, or one that broke off or was streamed away: never half an answer
            why = copy.error.msg if copy.error else "no response" if copy.response is None else "no body"
            flow.response = fallback_failed(why)
            self.recorder.decide(flow, Decision.FALLBACK, error=why)
            logger.warning(
                f"control-plane fallback for {copy.metadata['browserrouting']['url']} failed: {why}"
            )

    def on_error(self, flow: http.HTTPFlow, record: dict[str, Any]) -> None:
        # Not guarded by `flow.live`: a killed flow (flow.kill(), an injected reset, mitmweb's
        # kill) is no longer live, and must still be decided and free its state. Offline reads
        # reach here only with their recorded final decision, which this leaves as it was.
        why = flow.error.msg if flow.error else None
        if record["decision"] == Decision.REISSUE:
            self.recorder.decide(flow, Decision.REISSUE, error=why)
        elif record["decision"] == Decision.ROUTED:
            self.router.originals.pop(flow.id, None)
            if flow.response is not None and flow.response.status_code < 400:
                # The VM answered and the stream broke later (often the client leaving).
                self.recorder.decide(flow, Decision.ROUTED, vm_status=flow.response.status_code, error=why)
            else:
                self.recorder.decide(flow, Decision.NO_FALLBACK, "vm_error", error=why)
