"""`scripts/demo.py`, the README's first command, run as a user would run it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scripts" / "demo.py"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, str(DEMO), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_demo_replays_the_live_qa_and_passes() -> None:
    done = run_demo()
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    for step in ("(A) live browser", "(B) browser killed on the VM", "(C) telemetry events"):
        assert re.search(rf"^{re.escape(step)}", out, re.MULTILINE), f"missing step header {step!r}"
    assert "FAIL" not in out
    summary = re.search(r"^demo: (\d+) passed, (\d+) failed$", out, re.MULTILINE)
    assert summary and int(summary.group(1)) >= 9 and summary.group(2) == "0"
    assert len(re.findall(r"^\s+PASS\b", out, re.MULTILINE)) == int(summary.group(1))
    # Secrets never show: the fake API key, or a jwt (the simulator's start with "tok+").
    assert "sk-demo" not in out and "tok+" not in out and "tok%2B" not in out


def test_demo_help() -> None:
    done = run_demo("--help")
    assert done.returncode == 0 and "usage: scripts/demo" in done.stdout
