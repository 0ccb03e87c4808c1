"""Unit tests of fault-injection rules (addon/faults/steps.py, addon/faults/rules.py): the grammar,
what each rule refuses and why, matching, the sequence a rule steps through, and seeded chance."""

from __future__ import annotations

import json

import pytest

from addon.comments import injected
from addon.faults import rules as inject
from addon.faults.steps import ACTIONS, NAMED_STATUSES, Step, answer, parse_step

SID, NAME = "sess-1", "qa-name"
EVENTS = "telemetry/events"
TAILS = (
    "telemetry",
    "telemetry/events",
    "telemetry/stream",
    "telemetry/streamx",
    "telemetry/stream/x",
    "telemetryx",
)


def kinds(
    rule: inject.InjectRule, n: int, keys: tuple[str | None, ...] = ("s",), tail: str = "fs"
) -> list[str]:
    """What `n` matching requests get from a rule alone ("-": no rule matched)."""
    taken = [inject.take([rule], keys, tail) for _ in range(n)]
    return [str(step) if step else "-" for step in taken]


# --------------------------------------------------------------------------- the rules of today


@pytest.mark.parametrize(
    ("text", "session", "prefix", "kind", "left"),
    [
        ("s=gone", "s", "", "gone", None),
        ("*=reset", "*", "", "reset", None),
        (" s/telemetry/events=502:3 ", "s", "telemetry/events", "502", 3),
        ("s//telemetry//stream/=404:1", "s", "telemetry/stream", "404", 1),
        ("qa-name/fs=401", "qa-name", "fs", "401", None),
        *[(f"s={k}", "s", "", k, None) for k in ("403", "500", "503", "504")],
    ],
)
def test_parse_rule_accepts_every_kind_prefix_and_count_of_today(
    text: str, session: str, prefix: str, kind: str, left: int | None
) -> None:
    rule = inject.parse_rule(text)
    assert (rule.session, rule.prefix, rule.kind, rule.left, rule.cp) == (session, prefix, kind, left, False)
    assert inject.parse_rule(str(rule)) == rule, "a rule prints as it parses"


def test_a_rule_of_today_keeps_its_meaning() -> None:
    """`S=KIND` answers until cleared; `S=KIND:COUNT` answers COUNT times, then the VM does."""
    assert kinds(inject.parse_rule("s=502"), 5) == ["502"] * 5
    counted = inject.parse_rule("s=503:2")
    assert [counted.left, *([*kinds(counted, 1), str(counted.left)] for _ in range(3))] == [
        2, ["503:2", "1"], ["503:2", "0"], ["-", "0"],
    ]  # fmt: skip


def test_take_uses_the_first_matching_rule_and_spends_its_count() -> None:
    rules = inject.parse_rules("s/fs=401:1,s=500:2,*=503")
    taken = [inject.take(rules, ("s", None), t) for t in ("fs/x", "fs/x", "curl", "fs")]
    assert [step.kind if step else None for step in taken] == ["401", "500", "500", "503"]
    assert [r.left for r in rules] == [0, 0, None]
    assert [r.as_json()["left"] for r in rules] == [0, 0, None]
    assert inject.take(inject.parse_rules("s=gone"), ("other", None), "fs") is None


@pytest.mark.parametrize(
    ("prefix", "matched"),
    [
        ("telemetry", set(TAILS[:-1])),
        ("telemetry/stream", {"telemetry/stream", "telemetry/stream/x"}),
        ("tele", set()),
    ],
)
def test_take_matches_prefixes_on_segment_boundaries(prefix: str, matched: set[str]) -> None:
    rules = inject.parse_rules(f"s/{prefix}=500")
    assert {t for t in TAILS if inject.take(rules, ("s",), t)} == matched
    assert inject.take(inject.parse_rules("s/telemetry/events=500"), ("s",), "telemetry//events/") is not None


def test_take_keys_are_the_session_id_and_its_browser_name() -> None:
    keys = (SID, NAME)
    assert kinds(inject.parse_rule(f"{NAME}=403"), 1, keys) == ["403"]
    assert kinds(inject.parse_rule(f"{SID}=401"), 1, keys) == ["401"]
    assert kinds(inject.parse_rule("None=401"), 1, (SID, None)) == ["-"]
    assert kinds(inject.parse_rule("*=504"), 1, (SID, None)) == ["504"]


@pytest.mark.parametrize("kind", list(NAMED_STATUSES))
def test_answer_of_a_named_status_is_its_status_and_a_json_object(kind: str) -> None:
    status, body = answer(kind)
    doc = json.loads(body)
    assert status == (404 if kind == "gone" else int(kind))
    if kind == "gone":
        assert doc == {"code": "browser_gone", "message": "browser not found"}
    else:
        assert isinstance(doc, dict) and doc["code"] != "browser_gone" and doc["message"]


# --------------------------------------------------------------------------- the new grammar


@pytest.mark.parametrize(
    ("status", "code"),
    [("429", "too_many_requests"), ("400", "bad_request"), ("418", "i_m_a_teapot"),
     ("507", "insufficient_storage"), ("499", "client_error"), ("599", "server_error")],
)  # fmt: skip
def test_any_status_from_400_to_599_answers_a_json_body_fitting_it(status: str, code: str) -> None:
    rule = inject.parse_rule(f"s={status}")
    assert rule.kind == status
    got, body = answer(status)
    doc = json.loads(body)
    assert got == int(status) and doc["code"] == code and doc["message"]


@pytest.mark.parametrize(
    ("text", "step"),
    [
        ("gone@1500", Step("gone", ms=1500)),
        ("delay@300", Step("delay", ms=300)),
        ("502*2", Step("502", times=2, count_form="*")),
        ("502:2", Step("502", times=2, count_form=":")),
        ("reset@200:1", Step("reset", ms=200, times=1, count_form=":")),
        ("cut*3", Step("cut", times=3, count_form="*")),
        ("502~0.05", Step("502", chance=0.05)),
        ("hang~1", Step("hang", chance=1.0)),
        ("pass", Step("pass")),
    ],
)
def test_parse_step_reads_each_form(text: str, step: Step) -> None:
    assert parse_step(text, alone=True) == step
    assert str(step) == text


def test_a_step_without_a_count_covers_one_request_in_a_sequence_and_has_no_end_alone() -> None:
    assert parse_step("gone", alone=False).times == 1
    assert parse_step("gone", alone=True).times is None
    assert parse_step("gone~0.5", alone=False).times is None


def test_a_sequence_gives_each_matching_request_the_next_step_and_is_spent_after_the_last() -> None:
    rule = inject.parse_rule("s/telemetry/events=502*2>gone")
    assert [rule.left, rule.kind] == [3, "502"]
    assert kinds(rule, 2, tail=EVENTS) == ["502*2", "502*2"]
    assert [rule.left, rule.kind, rule.spent] == [1, "gone", False]
    assert kinds(rule, 2, tail=EVENTS) == ["gone", "-"]
    assert [rule.left, rule.kind, rule.spent] == [0, "gone", True]
    assert kinds(rule, 1, tail="fs") == ["-"], "spent, and no other path anyway"


def test_a_spent_rule_lets_the_next_rule_answer() -> None:
    rules = inject.parse_rules("s=502*2>gone,s=404")
    assert [str(inject.take(rules, ("s",), "fs")) for _ in range(5)] == [
        "502*2",
        "502*2",
        "gone",
        "404",
        "404",
    ]


def test_pass_steps_let_requests_go_on_and_still_count() -> None:
    rule = inject.parse_rule("s=pass*2>503>pass>cut@20:2")
    assert kinds(rule, 7) == ["pass*2", "pass*2", "503", "pass", "cut@20:2", "cut@20:2", "-"]


def test_the_list_shows_each_rule_with_its_steps_and_what_is_left() -> None:
    rule = inject.parse_rule("cp:s/telemetry/events=503@200:1>pass*2>429~0.5")
    kinds(rule, 2, tail=EVENTS)
    assert rule.as_json() == {
        "rule": "cp:s/telemetry/events=503@200:1>pass*2>429~0.5", "cp": True, "session": "s",
        "prefix": "telemetry/events", "kind": "pass", "left": None, "spent": False,
        "steps": [
            {"step": "503@200:1", "kind": "503", "delay_ms": 200, "times": 1, "chance": None, "left": 0},
            {"step": "pass*2", "kind": "pass", "delay_ms": None, "times": 2, "chance": None, "left": 1},
            {"step": "429~0.5", "kind": "429", "delay_ms": None, "times": None, "chance": 0.5, "left": None},
        ],
    }  # fmt: skip
    assert json.loads(json.dumps(rule.as_json())) == rule.as_json()


def test_cp_rules_are_marked_and_print_as_they_parse() -> None:
    rule = inject.parse_rule(" cp:qa-name/telemetry/events=503:1 ")
    assert (rule.cp, rule.session, rule.prefix, str(rule)) == (
        True,
        "qa-name",
        EVENTS,
        "cp:qa-name/telemetry/events=503:1",
    )
    assert not inject.parse_rule("qa-name=503").cp


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("x=teapot", "unknown kind 'teapot'"),
        ("s=600", "unknown kind '600'"),
        ("s=399", "unknown kind '399'"),
        ("s=0502", "unknown kind '0502'"),
        ("=gone", "is not an injection rule"),
        ("cp:=gone", "is not an injection rule"),
        ("s", "is not an injection rule"),
        ("a b=gone", "is not an injection rule"),
        ("s=gone:0", "COUNT must be a whole number"),
        ("s=gone:x", "COUNT must be a whole number"),
        ("s=gone:-1", "COUNT must be a whole number"),
        ("s=gone:", "COUNT must be a whole number"),
        ("s=502*0", "N must be a whole number"),
        ("s=502*", "N must be a whole number"),
        ("s=502*2:3", "N must be a whole number"),
        ("s=502*2~0.5", "one of *N, :COUNT or ~P"),
        ("s=502@0", "@MS must be a whole number"),
        ("s=502@x", "@MS must be a whole number"),
        ("s=502@3600001", "@MS must be a whole number"),
        ("s=502@1@2", "@MS must be a whole number"),
        ("s=delay", "delay needs @MS"),
        ("s=delay*2", "delay needs @MS"),
        ("s=hang@100", "hang takes no @MS"),
        ("s=pass@100", "pass takes no @MS"),
        ("s=502~0", "~P must be a probability"),
        ("s=502~1.5", "~P must be a probability"),
        ("s=502~nan", "~P must be a probability"),
        ("s=502~", "~P must be a probability"),
        ("s=502~0.5>gone", "only the last step may have one"),
        ("s=502>", "step '': unknown kind ''"),
        ("s=>gone", "step '': unknown kind ''"),
        ("s=502>>gone", "step '': unknown kind ''"),
        ("s=502>teapot", "step 'teapot': unknown kind"),
        ("s=", "unknown kind ''"),
        ("s/../x=gone", "is not a subresource path prefix"),
        ("s/%2e%2e/x=gone", "is not a subresource path prefix"),
        ("s/./x=gone", "is not a subresource path prefix"),
        ("s/tele metry=gone", "is not a subresource path prefix"),
        ("s/%zz=gone", "is not a subresource path prefix"),
    ],
)
def test_parse_rule_refuses_a_bad_rule_naming_it_and_saying_why(bad: str, why: str) -> None:
    with pytest.raises(ValueError) as refused:
        inject.parse_rule(bad)
    assert str(refused.value).startswith(repr(bad.strip())), refused.value
    assert why in str(refused.value)


def test_parse_rules_skips_empty_entries_and_names_the_bad_one() -> None:
    assert [str(r) for r in inject.parse_rules(" a=gone, ,b/fs=502:2,")] == ["a=gone", "b/fs=502:2"]
    assert inject.parse_rules("") == []
    with pytest.raises(ValueError, match="'b=502>delay'"):
        inject.parse_rules("a=gone,b=502>delay")


# --------------------------------------------------------------------------- chance


def pattern(text: str, seed: int, n: int = 60) -> str:
    rule = inject.parse_rule(text, seed)
    return "".join(
        "x" if step and step.kind != "pass" else "."
        for step in (inject.take([rule], ("s",), "fs") for _ in range(n))
    )


def test_chance_repeats_under_a_seed_and_changes_with_it() -> None:
    first = pattern("s=502~0.3", seed=7)
    assert first == pattern("s=502~0.3", seed=7), "the same seed, the same pattern"
    assert first != pattern("s=502~0.3", seed=8)
    assert 5 < first.count("x") < 35, "about 30%"
    assert pattern("s=502~1", seed=7) == "x" * 60


def test_each_rule_draws_on_its_own_so_other_rules_traffic_does_not_change_its_pattern() -> None:
    alone = pattern("s=502~0.5", seed=3, n=20)
    rules = inject.parse_rules("o=503~0.5,s=502~0.5", seed=3)
    got = ""
    for _ in range(20):
        inject.take(rules, ("o",), "fs")  # another session's request draws from the other rule
        step = inject.take(rules, ("s",), "fs")
        got += "x" if step and step.kind != "pass" else "."
    assert got == alone


def test_reseeding_a_rule_starts_its_pattern_again() -> None:
    rule = inject.parse_rule("s=502~0.5", seed=5)
    before = kinds(rule, 30)
    rule.seed(5)
    assert kinds(rule, 30) == before
    assert set(before) == {"502~0.5", "pass"}


# --------------------------------------------------------------------------- how a record names it


@pytest.mark.parametrize(
    ("record", "text"),
    [({"injected": "502"}, "502"), ({"injected": "gone", "injected_delay_ms": 1500}, "gone@1500"),
     ({"injected": "delay", "injected_delay_ms": 300}, "delay@300"), ({}, None)],
)  # fmt: skip
def test_a_record_names_the_injected_step_as_a_rule_writes_it(
    record: dict[str, object], text: str | None
) -> None:
    assert injected(record) == text


def test_every_kind_has_a_name_or_is_a_status() -> None:
    assert set(ACTIONS) == {"reset", "pass", "delay", "hang", "cut"}
    for kind in (*NAMED_STATUSES, *ACTIONS, "418"):
        inject.parse_rule(f"s={kind}@10" if kind == "delay" else f"s={kind}")
