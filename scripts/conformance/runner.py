"""One client's run: its service (the simulator, or the live one), its audit proxy, its driver,
the selected cases one after the other, the repro of each failure, and the clean-up, which runs
also when the run is interrupted (Ctrl-C, SIGTERM) and cannot itself be interrupted."""

from __future__ import annotations

import contextlib
import logging
import re
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .caserun import ClientContext
from .cases import ALLOWLIST, Case
from .clients import Client
from .driver import Driver, DriverError
from .judge import Verdict, run_case
from .proxy import AuditProxy
from .scrub import Scrubber
from .service import Service

log = logging.getLogger(__name__)

CURL_HEADER = """\
# The failing request of {case} ({client}), as mitmproxy exported it (export.file curl).
# Its secrets are shell variables: set KERNEL_API_KEY, and KERNEL_BROWSER_JWT (the browser's jwt,
# URL-encoded) if it has one. The runner sent it through its audit proxy (add -x PROXY --cacert CA).
"""


@dataclass
class ClientResult:
    client: Client
    label: str  # what the driver said it is, e.g. "kernel 0.131.0"
    folder: Path  # its decision log, driver log and repros
    verdicts: list[Verdict] = field(default_factory=list)
    setup_error: str | None = None  # why no case could run
    left_behind: list[str] = field(default_factory=list)  # browsers the clean-up could not delete
    log_options: dict[str, str] = field(default_factory=dict)  # the proxy's options, for the report


def slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=@+-]+", "_", spec).strip("_")[:60] or "client"


def driver_settings(service: Service, proxy: AuditProxy) -> dict[str, str]:
    """The driver's environment (docs/conform.md): where to send what, and what to trust."""
    ca = str(proxy.ca_cert)
    settings = {
        "KERNEL_API_KEY": service.api_key,
        "KERNEL_BASE_URL": service.base_url,
        "KERNEL_BROWSER_ROUTING_SUBRESOURCES": ALLOWLIST,
        "KERNEL_CONFORM_PROXY": proxy.url,
        "KERNEL_CONFORM_CA": ca,
        "NO_PROXY": "",
        "no_proxy": "",
    }
    settings |= {name: proxy.url for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    return settings | {name: ca for name in ("SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE")}


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait: the clean-up must delete every browser it can."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_client(
    client: Client, cases: list[Case], service_of: Callable[[], Service], folder: Path, window_ms: int
) -> ClientResult:
    result = ClientResult(client, client.spec, folder)
    service: Service | None = None
    proxy: AuditProxy | None = None
    driver: Driver | None = None
    try:
        service = service_of()
        proxy = AuditProxy(service, ALLOWLIST, window_ms, folder / "decisions.jsonl").start()
        result.log_options = proxy.options
        driver = Driver(client, driver_settings(service, proxy), folder / "driver.log")
        ctx = ClientContext(driver, driver.start(), proxy, service, window_ms)
        result.label = ctx.hello.label
        for case in cases:
            verdict = one_case(ctx, case)
            log.info("%s %s: %s %s", client.spec, case.id, verdict.verdict, verdict.why)
            if verdict.verdict == "fail":
                write_repro(proxy, Scrubber(service.api_key), verdict, client.spec, folder / case.id)
            if verdict.driver_failed:  # dead, or out of step with its answers: a fresh one
                driver.stop()
                ctx.hello = driver.start()
            result.verdicts.append(verdict)
    except DriverError as e:
        result.setup_error = str(e)
    except (RuntimeError, OSError) as e:  # the simulator or the proxy did not start
        result.setup_error = f"{type(e).__name__}: {e}"
    finally:
        with uninterrupted():
            if driver is not None:
                driver.stop()
            if service is not None:
                if proxy is not None:
                    service.note_created(proxy.read_log())
                result.left_behind = service.clean_up()
                if result.left_behind:
                    log.error("%s: could not delete %s", client.spec, ", ".join(result.left_behind))
                service.stop()
            if proxy is not None:
                proxy.stop()
    if result.setup_error is not None:  # every case it could not run says why
        result.verdicts += [
            Verdict(case.id, "error", result.setup_error) for case in cases[len(result.verdicts) :]
        ]
    return result


def one_case(ctx: ClientContext, case: Case) -> Verdict:
    """The case's verdict; a failure of the runner itself is the case's error, not a traceback."""
    try:
        return run_case(ctx, case)
    except Exception as e:  # the boundary between cases: one broken case must not end the run
        log.debug("case %s raised", case.id, exc_info=True)
        return Verdict(case.id, "error", f"the runner failed: {type(e).__name__}: {e}")


def write_repro(proxy: AuditProxy, scrub: Scrubber, verdict: Verdict, client: str, folder: Path) -> None:
    """The case's flows as HAR and the failing request as a curl line, secrets scrubbed."""
    if not verdict.flows:
        return
    folder.mkdir(parents=True, exist_ok=True)
    har, curl = folder / "flows.har", folder / "request.sh"
    try:
        proxy.save_har(verdict.flows, har)
        scrub.har(har)
        verdict.repro["har"] = str(har)
        failing = verdict.failing_flow or verdict.flows[-1]
        proxy.export_curl(failing, curl)
        scrub.curl(curl)
        curl.write_text(
            CURL_HEADER.format(case=verdict.case, client=client) + curl.read_text(encoding="utf-8")
        )
        verdict.repro["curl"] = str(curl)
    except Exception as e:  # a repro that cannot be written leaves the verdict as it is
        log.warning("%s: could not write the repro: %s", verdict.case, e)
