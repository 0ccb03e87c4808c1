"""One step of a fault-injection rule (`KIND[@MS][*N]`, `KIND[@MS]:COUNT`, `KIND[@MS]~P`): what
the proxy does to one matching request, and the answer it gives. Pure, no mitmproxy import."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from http import HTTPStatus

GONE_BODY = {"code": "browser_gone", "message": "browser not found"}
# The statuses the first rules knew, with the bodies scripts already rely on; any other status
# from 400 to 599 gets a body built from its reason phrase (see `answer`).
NAMED_STATUSES: dict[str, tuple[int, dict[str, str]]] = {
    "gone": (404, GONE_BODY),
    "404": (404, {"code": "not_found", "message": "not found"}),
    "401": (401, {"code": "unauthorized", "message": "invalid or expired token"}),
    "403": (403, {"code": "forbidden", "message": "forbidden"}),
    "500": (500, {"code": "internal_error", "message": "internal error"}),
    "502": (502, {"code": "bad_gateway", "message": "browser unavailable"}),
    "503": (503, {"code": "service_unavailable", "message": "service unavailable"}),
    "504": (504, {"code": "gateway_timeout", "message": "gateway timeout"}),
}
# The kinds that are no status: close with no answer, go on untouched, go on late, hold until
# the client gives up, send the real answer cut short.
ACTIONS = ("reset", "pass", "delay", "hang", "cut")
MAX_MS = 3_600_000  # an hour: a longer wait is what `hang` is for
MAX_TIMES = 1_000_000_000


def is_status(kind: str) -> bool:
    return kind.isdigit() and str(int(kind)) == kind and 400 <= int(kind) <= 599


def is_answer(kind: str) -> bool:
    """Whether the proxy answers with a status of its own (`gone` and the numbers)."""
    return kind in NAMED_STATUSES or is_status(kind)


@dataclass(frozen=True)
class Step:
    kind: str  # a status ("502"), gone, reset, pass, delay, hang or cut
    ms: int | None = None  # @MS: the request is held this long first
    times: int | None = None  # matching requests it covers; None: no end (a lone step, or ~P)
    chance: float | None = None  # ~P: the probability that a matching request gets it
    count_form: str = ""  # "*" or ":" as written, so that a step prints as it parses

    def __str__(self) -> str:
        text = self.kind + (f"@{self.ms}" if self.ms is not None else "")
        if self.chance is not None:
            return text + f"~{self.chance:g}"
        return text + (f"{self.count_form}{self.times}" if self.count_form else "")

    @property
    def holds(self) -> bool:
        """Whether the request waits in the proxy before the step is carried out."""
        return self.ms is not None or self.kind == "hang"


PASS = Step("pass")  # what a request gets from a rule that lets it go on (a ~P draw that missed)


def parse_step(text: str, alone: bool) -> Step:
    """One step; ValueError says what is wrong with it. A step without *N, :COUNT or ~P covers
    one request in a sequence and has no end `alone`."""
    body, tilde, p = text.partition("~")
    if tilde and any(c in body for c in "*:"):
        raise ValueError("a step takes one of *N, :COUNT or ~P")
    form = next((c for c in "*:" if c in body), "") if not tilde else ""
    body, _, count = body.partition(form) if form else (body, "", "")
    kind, at, ms_text = body.partition("@")
    if kind not in (*NAMED_STATUSES, *ACTIONS) and not is_status(kind):
        raise ValueError(
            f"unknown kind {kind!r} (want one of {', '.join((*NAMED_STATUSES, *ACTIONS))}, "
            "or a status from 400 to 599)"
        )
    ms = None
    if at:
        if not (ms_text.isascii() and ms_text.isdigit() and 1 <= int(ms_text) <= MAX_MS):
            raise ValueError(f"@MS must be a whole number of milliseconds from 1 to {MAX_MS}")
        ms = int(ms_text)
    if kind == "delay" and ms is None:
        raise ValueError("delay needs @MS (delay@500: the request goes on after 500 ms)")
    if kind == "hang" and ms is not None:
        raise ValueError("hang takes no @MS: it holds the request until the client gives up")
    if kind == "pass" and ms is not None:
        raise ValueError("pass takes no @MS (delay@MS sends the request on late)")
    chance = parse_chance(p) if tilde else None
    times = None if alone or tilde else 1
    if form:
        name = "COUNT" if form == ":" else "N"
        if not (count.isascii() and count.isdigit() and 1 <= int(count) <= MAX_TIMES):
            raise ValueError(f"{name} must be a whole number of at least 1")
        times = int(count)
    return Step(kind, ms, times, chance, form)


def parse_chance(text: str) -> float:
    try:
        chance = float(text)
    except ValueError:
        chance = math.nan
    if not (math.isfinite(chance) and 0 < chance <= 1) or "_" in text:
        raise ValueError("~P must be a probability above 0, at most 1 (~0.05: one request in twenty)")
    return chance


def answer(kind: str) -> tuple[int, bytes]:
    """Status and JSON body of a status kind: `{"code", "message"}` fitting the status."""
    if kind in NAMED_STATUSES:
        status, body = NAMED_STATUSES[kind]
    else:
        status = int(kind)
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "client error" if status < 500 else "server error"
        body = {"code": re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_"), "message": phrase.lower()}
    return status, json.dumps(body).encode()
