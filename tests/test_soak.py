"""A small run of scripts/soak.py (its 10,000-request run is in the README), and its checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from soak import MIX, failures, misroutes

SOAK = Path(__file__).resolve().parent.parent / "scripts" / "soak.py"


def test_a_small_soak_has_no_misroute_no_wrong_answer_and_no_error() -> None:
    run = subprocess.run(
        [sys.executable, str(SOAK), "--requests", "300", "--concurrency", "6", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert "result: PASS" in run.stdout
    assert report["misroutes"] == {"api_key_at_vm": 0, "jwt_at_cp": 0}
    assert report["wrong_answers"] == 0 and report["errors"] == 0 and report["addon_errors"] == []
    assert sum(k["sent"] for k in report["kinds"].values()) == 300
    assert all(report["kinds"][kind]["sent"] > 0 for kind in MIX)  # every kind of request was in the mix
    assert report["servers"]["got"] == report["servers"]["expected"]
    assert report["servers"]["got"]["vm_direct"] > 0 and report["servers"]["got"]["cp"] > 0
    assert report["decisions"]["got"] == report["decisions"]["expected"]


def test_soak_help_names_its_options() -> None:
    run = subprocess.run([sys.executable, str(SOAK), "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0
    for option in ("--requests", "--concurrency", "--browsers", "--seed", "--json"):
        assert option in run.stdout


def request(query: str = "", **headers: str) -> dict[str, Any]:
    return {"query": query, "headers": headers, "via_cp": False}


def test_the_soak_counts_an_api_key_at_the_vm_and_a_jwt_at_the_cp_as_misroutes() -> None:
    stats = {
        "vm": {"requests": [request("jwt=t"), request("jwt=t", authorization="Bearer k")]},
        "cp": {"requests": [request("limit=2"), request("a=1&jwt=t"), request("jwt")]},
    }
    assert misroutes(stats) == {"api_key_at_vm": 1, "jwt_at_cp": 2}


def test_the_soak_fails_on_any_misroute_wrong_answer_error_or_count_that_differs() -> None:
    clean: dict[str, Any] = {
        "misroutes": {"api_key_at_vm": 0, "jwt_at_cp": 0},
        "wrong_answers": 0,
        "errors": 0,
        "servers": {"expected": {"cp": 2}, "got": {"cp": 2}},
        "decisions": {"expected": {"routed": 1}, "got": {"routed": 1}},
        "addon_errors": [],
    }
    assert failures(clean) == []
    broken: list[dict[str, Any]] = [
        {"misroutes": {"api_key_at_vm": 1, "jwt_at_cp": 0}},
        {"wrong_answers": 1},
        {"errors": 1},
        {"servers": {"expected": {"cp": 2}, "got": {"cp": 3}}},
        {"decisions": {"expected": {"routed": 1}, "got": {"passthrough": 1}}},
        {"addon_errors": ["Addon error: boom"]},
    ]
    for change in broken:
        assert len(failures({**clean, **change})) == 1, change
