"""The QA report's timeline of a run: a lane per browser session, a mark per flow placed by the
time its record was logged, cache changes as ticks, the fallback's link to its re-issue, each
mark's record as its tooltip. Pure, no mitmproxy import.

Bounded for large logs: lanes beyond a budget fold into one, and a lane with more marks than
pixels (or beyond the page's budget of detailed marks) draws per-pixel-bucket counts instead.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..decisions import Decision
from .log import Record, Run, path_of, session_of, violations_of
from .text import css_class, offset, short, shown_record, status_text

# -- geometry and budgets ---------------------------------------------------------------------

SVG_W = 1090
PLOT_X = 206  # where the time axis starts
PLOT_W = 864  # pixels of time
PAD = 7  # inner margin, so that marks at either end are whole
AXIS_H = 22
LANE_H = 44
ROW_Y = (10, 24, 36)  # VM requests, CP requests, cache changes (within a lane)
MAX_LANES = 240  # on the page, shared by the runs
MAX_DETAILED = 3000  # marks drawn one by one (each carries its record), on the page
MAX_BUCKETS = 15000  # aggregated buckets on the page
FOLDED = "\0folded"  # the key of the lane that holds the sessions beyond the budget (no session id)

# decision -> (row, shape); colours live in the template's CSS.
FLOW_STYLE: dict[str, tuple[int, str]] = {
    Decision.ROUTED: (0, "circle"),
    Decision.NO_FALLBACK: (0, "cross"),
    Decision.FALLBACK: (0, "diamond"),
    Decision.CLIENT_ROUTED: (0, "circle"),
    Decision.PASSTHROUGH: (1, "dot"),
    Decision.REISSUE: (1, "triangle"),
    Decision.CLIENT_CP: (1, "dot"),
    Decision.CLIENT_FALLBACK: (1, "triangle"),
}
CACHE_SHAPES: dict[str, str] = {
    Decision.ROUTE_CACHED: "cached",
    Decision.ROUTE_EVICTED: "evicted",
    Decision.ROUTE_REFUSED: "refused",
}


# -- lanes, placed on the time axis -----------------------------------------------------------


@dataclass(slots=True)
class Item:
    """One thing on a lane: a flow (row 0 or 1) or a cache change (row 2)."""

    ts: float
    row: int
    decision: str
    flow_id: str | None
    record: Record
    bad: bool  # has a violation
    x: int = 0


@dataclass
class Lane:
    key: str  # session id, "" for flows of no session, FOLDED for the folded sessions
    items: list[Item] = field(default_factory=list)
    folded: int = 0  # sessions in the folded lane
    detailed: bool = True

    @property
    def first(self) -> float:
        return min(item.ts for item in self.items) if self.items else 0.0

    @property
    def interest(self) -> int:
        return sum(
            1
            for i in self.items
            if i.bad or i.decision in (Decision.FALLBACK, Decision.NO_FALLBACK, Decision.ROUTE_REFUSED)
        )


def lanes_of(run: Run) -> list[Lane]:
    lanes: dict[str, Lane] = {}
    for flow_id, record in run.flows.items():
        row = FLOW_STYLE.get(record["decision"], (1, "square"))[0]
        key = session_of(record) or ""
        item = Item(
            run.placed[flow_id], row, record["decision"], flow_id, record, bool(violations_of(record))
        )
        lanes.setdefault(key, Lane(key)).items.append(item)
    for change in run.cache:
        session = change.get("session_id")
        key = session if isinstance(session, str) and session else ""
        lanes.setdefault(key, Lane(key)).items.append(
            Item(change["ts"], 2, change["decision"], None, change, False)
        )
    return sorted(lanes.values(), key=lambda lane: (lane.first, lane.key))


def fold(lanes: list[Lane], cap: int) -> list[Lane]:
    """At most `cap` lanes: the most telling ones, in time order; the rest fold into one."""
    if len(lanes) <= cap:
        return lanes
    ranked = sorted(lanes, key=lambda lane: (-lane.interest, -len(lane.items), lane.first))
    kept, rest = ranked[: cap - 1], ranked[cap - 1 :]
    other = Lane(FOLDED, [item for lane in rest for item in lane.items], folded=len(rest), detailed=False)
    return [*sorted(kept, key=lambda lane: (lane.first, lane.key)), other]


def x_of(ts: float, t0: float, span: float) -> int:
    """The x of a moment on the time axis of a run that starts at `t0` and lasts `span`."""
    frac = (ts - t0) / span if span > 0 else 0.5
    return PLOT_X + PAD + round(frac * (PLOT_W - 2 * PAD))


def place(run: Run, lanes: list[Lane]) -> tuple[float, float]:
    """Each item's x on the run's time axis; the axis's start and span (a relogged record
    counts, its audit window ends there)."""
    stamps = [item.ts for lane in lanes for item in lane.items] + list(run.relogged.values())
    t0, t1 = (min(stamps), max(stamps)) if stamps else (0.0, 0.0)
    span = t1 - t0
    for lane in lanes:
        for item in lane.items:
            item.x = x_of(item.ts, t0, span)
    return t0, span


def choose_detail(all_lanes: Sequence[Lane]) -> None:
    """Lanes with more marks than pixels aggregate; so do the largest ones beyond the page's
    budget of detailed marks."""
    budget = MAX_DETAILED
    for lane in sorted(all_lanes, key=lambda lane: len(lane.items)):
        if lane.detailed and len(lane.items) <= PLOT_W and len(lane.items) <= budget:
            budget -= len(lane.items)
        else:
            lane.detailed = False


def bucket_width(all_lanes: Sequence[Lane]) -> int:
    """The narrowest bucket (1 px first) that keeps the page's buckets within budget."""
    aggregated = [lane for lane in all_lanes if not lane.detailed]
    for width in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128):
        seen = {(id(lane), i.row, i.x // width) for lane in aggregated for i in lane.items}
        if len(seen) <= MAX_BUCKETS:
            return width
    return PLOT_W


def nice_step(span: float) -> float:
    raw = max(span / 8, 1e-3)
    exp = 10.0 ** math.floor(math.log10(raw))
    return float(next(m * exp for m in (1, 2, 5, 10) if m * exp >= raw))


def axis(span: float) -> list[dict[str, Any]]:
    if span <= 0:
        return [{"x": PLOT_X + PLOT_W // 2, "text": "+0 s"}]
    step = nice_step(span)
    decimals = max(0, -math.floor(math.log10(step)))
    ticks: list[dict[str, Any]] = []
    at = 0.0
    while at <= span * 1.0001 and len(ticks) < 20:
        x = PLOT_X + PAD + round(at / span * (PLOT_W - 2 * PAD))
        ticks.append({"x": x, "text": f"+{at:.{decimals}f} s"})
        at += step
    return ticks


# -- what the template draws ------------------------------------------------------------------


@dataclass
class Timeline:
    lanes: list[dict[str, Any]]
    links: list[dict[str, Any]]
    windows: list[dict[str, Any]]
    ticks: list[dict[str, Any]]
    height: int
    undrawn_links: int


def timeline(run: Run, lanes: list[Lane], t0: float, span: float, width: int) -> Timeline:
    """The run's timeline as the template draws it; `width` is the page's bucket width."""
    drawn: dict[str, tuple[int, int]] = {}  # flow id -> mark position
    views = [
        lane_view(run, lane, AXIS_H + index * LANE_H, t0, width, drawn) for index, lane in enumerate(lanes)
    ]
    links, undrawn = links_of(run, drawn)
    height = AXIS_H + len(lanes) * LANE_H + 4
    return Timeline(views, links, windows_of(run, drawn, t0, span), axis(span), height, undrawn)


def lane_view(
    run: Run, lane: Lane, lane_y: int, t0: float, width: int, drawn: dict[str, tuple[int, int]]
) -> dict[str, Any]:
    """A lane: its label, then its marks (each noted in `drawn`) or, aggregated, its buckets."""
    flows = [i for i in lane.items if i.row < 2]
    kinds = Counter(i.decision for i in flows)
    bad = sum(1 for i in flows if i.bad)
    notable = [f"{kinds[k]} {k}" for k in (Decision.FALLBACK, Decision.NO_FALLBACK) if kinds[k]]
    full = lane.key or "flows that name no session"
    if lane.key == FOLDED:
        full = f"{lane.folded} sessions folded into one lane (the page shows at most {MAX_LANES} lanes)"
    return {
        "y": lane_y,
        "session": lane.key if lane.key not in ("", FOLDED) else "",
        "kind": {"": "no-session", FOLDED: "folded"}.get(lane.key, "session"),
        "label": {"": "(no session)", FOLDED: f"{lane.folded} more sessions"}.get(lane.key, short(lane.key)),
        "full": full,
        "marks": marks_of(run, lane, lane_y, t0, drawn) if lane.detailed else [],
        "buckets": [] if lane.detailed else buckets_of(lane, t0, width),
        "detailed": lane.detailed,
        "sub": f"{len(flows)} flow{'s' if len(flows) != 1 else ''}",
        "sub2": ", ".join(notable + ([f"{bad} violating"] if bad else [])),
    }


def marks_of(
    run: Run, lane: Lane, lane_y: int, t0: float, drawn: dict[str, tuple[int, int]]
) -> list[dict[str, Any]]:
    """A detailed lane's marks; flows closer than 9 px on a row take another of 3 levels."""
    marks = []
    last: dict[tuple[int, int], int] = {}
    for item in sorted(lane.items, key=lambda i: (i.row, i.x)):
        level = 0
        if item.row < 2:
            free = [lvl for lvl in (0, 1, 2) if item.x - last.get((item.row, lvl), -99) >= 9]
            level = free[0] if free else 0
            last[(item.row, level)] = item.x
        logged = run.logged_at.get(item.flow_id) if item.flow_id else None
        mark = mark_of(item, lane_y, level, t0, logged)
        marks.append(mark)
        if item.flow_id:
            drawn[item.flow_id] = (item.x, mark["abs_y"])
    return marks


def buckets_of(lane: Lane, t0: float, width: int) -> list[dict[str, Any]]:
    """An aggregated lane: per row, a bar per `width` pixels of time, its height by its count."""
    groups: dict[tuple[int, int], list[Item]] = defaultdict(list)
    for item in lane.items:
        groups[(item.row, item.x // width)].append(item)
    biggest = max((len(g) for g in groups.values()), default=1)
    buckets = []
    for (row, bucket), items in sorted(groups.items()):
        kinds = Counter(i.decision for i in items)
        bad = sum(1 for i in items if i.bad)
        height = 4 + round(8 * math.log1p(len(items)) / math.log1p(biggest))
        buckets.append({
            "x": bucket * width,  # pixels from the svg's left, as each item's x
            "w": max(width, 1),
            "y": ROW_Y[row] - height / 2,
            "h": height,
            "cls": css_class(kinds.most_common(1)[0][0]),
            "count": len(items),
            "bad": bad,
            "title": bucket_title(
                kinds, bad, min(i.ts for i in items) - t0, max(i.ts for i in items) - t0, row == 2
            ),
        })  # fmt: skip
    return buckets


def links_of(run: Run, drawn: Mapping[str, tuple[int, int]]) -> tuple[list[dict[str, Any]], int]:
    """An arrow from each VM answer to the CP re-issue that served it, where both are drawn; and
    how many pairs with a flow in this log are not drawn (a mark in a bucket)."""
    links, undrawn = [], 0
    pairs: dict[tuple[str, str], None] = {}  # (VM answer, CP re-issue), in log order
    for flow_id, record in run.flows.items():
        d = record["decision"]
        if d == Decision.FALLBACK and isinstance(record.get("reissue_flow"), str):
            pairs.setdefault((flow_id, record["reissue_flow"]))
        elif d in (Decision.REISSUE, Decision.CLIENT_FALLBACK) and isinstance(record.get("serves"), str):
            pairs.setdefault((record["serves"], flow_id))
    for src, dst in pairs:
        if src in drawn and dst in drawn:
            (x1, y1), (x2, y2) = drawn[src], drawn[dst]
            cx: float
            cy: float
            if abs(x2 - x1) < 40:  # close in time: a short bow out to the right, visible as such
                cx, cy = max(x1, x2) + 14, (y1 + y2) / 2
            else:
                cx, cy = (x1 + x2) / 2, min(y1, y2) - 10
            # Start and end at the marks' edges, so that the arrow hides neither.
            sx, sy = _toward(x1, y1, cx, cy, 6)
            ex, ey = _toward(x2, y2, cx, cy, 7)
            cp = run.flows.get(dst, {}).get("cp_status")
            title = (
                f"the VM's answer of flow {src} was served by the CP re-issue {dst} (CP {status_text(cp)})"
            )
            d = f"M{sx:.1f},{sy:.1f} Q{cx:.1f},{cy:.1f} {ex:.1f},{ey:.1f}"
            links.append({"from": src, "to": dst, "d": d, "title": title})
        elif src in run.flows or dst in run.flows:
            undrawn += 1
    return links, undrawn


def windows_of(
    run: Run, drawn: Mapping[str, tuple[int, int]], t0: float, span: float
) -> list[dict[str, Any]]:
    """For each drawn missing_fallback, the audit window: from its answer to its report."""
    windows = []
    for flow_id, ended in run.relogged.items():
        record = run.flows[flow_id]
        if "missing_fallback" in violations_of(record) and flow_id in drawn:
            x1, y = drawn[flow_id]
            waited = offset(ended - run.placed[flow_id])[1:]
            title = (
                f"no fallback within the audit window: missing_fallback reported {waited} after the answer"
            )
            windows.append({"x1": x1, "x2": x_of(ended, t0, span), "y": y, "flow": flow_id, "title": title})
    return windows


def mark_of(item: Item, lane_y: int, level: int, t0: float, logged: float | None) -> dict[str, Any]:
    record, decision = item.record, item.decision
    shape = (
        FLOW_STYLE.get(decision, (1, "square"))[1] if item.row < 2 else CACHE_SHAPES.get(decision, "refused")
    )
    dy = (0, -5, 5)[level] if item.row < 2 else 0
    first = f"{decision}" + (f" ({record['reason']})" if record.get("reason") else "")
    first += f" · {offset(item.ts - t0)}"
    first += f" (the VM's answer; logged {offset(logged - t0)})" if logged is not None else ""
    if item.row < 2:
        first += f" · {record.get('method', '')} {path_of(record.get('url'))}"
    return {
        "x": item.x,
        "y": ROW_Y[item.row] + dy,
        "abs_y": lane_y + ROW_Y[item.row] + dy,
        "shape": shape,
        "cls": css_class(decision),
        "decision": decision,
        "flow": item.flow_id or "",
        "bad": item.bad,
        "injected": bool(record.get("injected")),
        "cache": item.row == 2,
        "title": f"{first}\n{shown_record(record)}",
    }


def bucket_title(kinds: Counter[str], bad: int, start: float, end: float, cache: bool) -> str:
    n = sum(kinds.values())
    what = "cache changes" if cache else "flows"
    text = f"{n} {what}, {offset(start)} – {offset(end)}: " + ", ".join(
        f"{k} {v}" for k, v in kinds.most_common()
    )
    return text + (f"; {bad} with violations" if bad else "")


def _toward(x: float, y: float, tx: float, ty: float, by: float) -> tuple[float, float]:
    """(x, y) moved `by` pixels toward (tx, ty)."""
    length = math.hypot(tx - x, ty - y)
    if length <= by:
        return x, y
    return x + (tx - x) * by / length, y + (ty - y) * by / length
